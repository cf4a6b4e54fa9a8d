//! Compiles mapping files against both sides' live schemas.
