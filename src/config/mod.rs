//! Typed, layered settings and mapping files.
