//! `kiln lint FILE...`: validates buildspecs without running anything.

use std::path::PathBuf;
use std::process::ExitCode;

use kiln_buildspec::{parse_file, Diagnostic};
use serde_json::json;

#[derive(Debug, clap::Args)]
pub struct LintArgs {
    /// Buildspec files to check
    #[arg(required = true)]
    files: Vec<PathBuf>,
    /// Print one JSON object with every file's diagnostics
    #[arg(long)]
    json: bool,
}

pub fn lint(args: &LintArgs) -> ExitCode {
    let mut all_valid = true;
    let mut report = Vec::new();
    for file in &args.files {
        let (valid, diagnostics): (bool, Vec<Diagnostic>) = match parse_file(file) {
            Ok(parsed) => (true, parsed.warnings),
            Err(errors) => (false, errors.0),
        };
        all_valid &= valid;
        if args.json {
            report.push(json!({
                "file": file.display().to_string(),
                "valid": valid,
                "diagnostics": diagnostics,
            }));
        } else {
            for d in &diagnostics {
                eprintln!("{d}");
            }
            if valid {
                println!("{}: ok", file.display());
            }
        }
    }
    if args.json {
        println!("{}", json!({ "valid": all_valid, "files": report }));
    }
    if all_valid {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(2)
    }
}
