//! The `.nvr` front end on arbitrary text: parsing, imports, checking and the formatter must
//! never panic, and whatever the formatter prints must parse again without errors.
//!
//! Imports in fuzzed text are resolved against the working directory, as `check_text` does;
//! run the target from `fuzz/` so that made-up import paths simply do not exist.

#![no_main]

use libfuzzer_sys::fuzz_target;
use netvm_lang::parse::parse_file;
use netvm_lang::FileId;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let checked = netvm_lang::check_text("fuzz.nvr", text);
    for diag in &checked.diagnostics {
        let _ = diag.render(checked.sources(), false);
        let _ = diag.to_json(checked.sources());
    }
    if let Ok(formatted) = netvm_lang::print::format_source(text) {
        let (_, diags) = parse_file(FileId(0), &formatted);
        if let Some(diag) = diags.iter().find(|d| d.is_error()) {
            panic!(
                "formatted text does not parse again: {}\n--- input ---\n{text}\n--- formatted ---\n{formatted}",
                diag.message
            );
        }
    }
});
