//! Import shadowing (docs/language-notes.md, "Names and files"): a file's own declarations
//! shadow the names it imports, with a note (N001); two imports that declare one name are
//! an error (E003) only where the name is used.

use std::path::Path;

use netvm_compiler::testing::run_tests;
use netvm_compiler::{lower, Interpreter};
use netvm_lang::{check_path, Checked};

fn write(dir: &Path, name: &str, text: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path.display().to_string()
}

fn codes(checked: &Checked) -> Vec<&'static str> {
    checked
        .diagnostics
        .iter()
        .map(|d| d.code.as_str())
        .collect()
}

fn passing(checked: &Checked) -> usize {
    let policy = checked.policy.as_ref().expect("no errors");
    let engine = Interpreter::new(lower(policy)).unwrap();
    let outcomes = run_tests(policy, &engine);
    for o in &outcomes {
        assert!(o.failure.is_none(), "{:?}", o.failure);
    }
    outcomes.len()
}

#[test]
fn a_local_declaration_shadows_a_stdlib_name_with_a_note_and_is_the_one_used() {
    let dir = tempfile::tempdir().unwrap();
    // std.ports declares its own WEB ({HTTP, HTTPS, HTTP_ALT, HTTPS_ALT}).
    let root = write(
        dir.path(),
        "root.nvr",
        "import std.ports\nport wan\nport lan\nconst WEB = {8000..8100}\n\
         rule web : tcp.dport in WEB => out lan\nrule ssh : tcp.dport == SSH => drop\n\
         test \"local WEB\" {\n  tcp { tcp.dport = 8080 } => rule web\n  tcp { tcp.dport = 443 } => rule default\n  tcp { tcp.dport = 22 } => rule ssh\n}\n",
    );
    let checked = check_path(&root).unwrap();
    assert_eq!(codes(&checked), ["N001"], "{:?}", checked.diagnostics);
    assert_eq!(checked.error_count() + checked.warning_count(), 0);
    let note = &checked.diagnostics[0];
    assert!(
        note.message
            .contains("`WEB` shadows the `WEB` that std.ports declares"),
        "{}",
        note.message
    );
    assert_eq!(passing(&checked), 3);
}

#[test]
fn two_imports_declaring_one_name_are_an_error_only_where_it_is_used() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "a.nvr", "const P = 80\nconst A = 1\n");
    write(dir.path(), "b.nvr", "const P = 443\nconst B = 2\n");
    let unused = write(
        dir.path(),
        "unused.nvr",
        "import \"a.nvr\"\nimport \"b.nvr\"\nport lan\nrule r : tcp.dport == A or tcp.dport == B => out lan\n",
    );
    let checked = check_path(&unused).unwrap();
    assert_eq!(
        codes(&checked),
        Vec::<&str>::new(),
        "{:?}",
        checked.diagnostics
    );

    let used = write(
        dir.path(),
        "used.nvr",
        "import \"a.nvr\"\nimport \"b.nvr\"\nport lan\nrule r : tcp.dport == P => out lan\n",
    );
    let checked = check_path(&used).unwrap();
    assert_eq!(codes(&checked), ["E003"], "{:?}", checked.diagnostics);
    let d = &checked.diagnostics[0];
    let (line, _) = checked
        .sources()
        .get(d.span.file)
        .line_col(d.span.start as usize);
    assert_eq!(line, 4, "reported at the use");
    assert_eq!(d.notes.len(), 2, "points at both declarations");

    // Declaring it locally settles it: the local one shadows both.
    let settled = write(
        dir.path(),
        "settled.nvr",
        "import \"a.nvr\"\nimport \"b.nvr\"\nport lan\nconst P = 8080\nrule r : tcp.dport == P => out lan\n",
    );
    let checked = check_path(&settled).unwrap();
    assert_eq!(
        codes(&checked),
        ["N001", "N001"],
        "{:?}",
        checked.diagnostics
    );
}
