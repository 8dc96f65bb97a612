//! Fuzz checks shared by the cargo-fuzz targets and the seed-corpus tests.
