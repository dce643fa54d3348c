//! The CodeBuild buildspec model for Kiln: parsing with source positions, validation with
//! `file:line:col` diagnostics, the phase routing state machine and the artifact glob rules.
//! Pure: no I/O beyond what the caller hands in.

pub mod archive;
pub mod artifacts;
pub mod diagnostic;
pub mod glob;
pub mod model;
pub mod names;
pub mod parse;
pub mod routing;

pub use diagnostic::{Diagnostic, Diagnostics, Severity};
pub use model::*;
pub use parse::{parse, parse_file, Parsed};
