//! imgforge library
