//! The integration tests: one binary, a module per area (ripgrep's layout).

mod common;

mod append_parts;
mod bad_input;
mod cancel;
mod cli;
mod compute;
mod convert;
mod export;
mod faults;
mod grow;
mod hdf5;
mod interop;
mod issue18;
mod jobs;
mod parts;
mod paths;
mod preview;
mod project;
mod proptests;
mod pyramid;
mod readers;
mod reduce;
mod s3;
mod scale;
mod slurm;
mod tiff;
mod verify;
mod write;
