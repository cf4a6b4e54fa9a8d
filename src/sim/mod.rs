//! The Marketo simulator.
