//! The docs stand alone and say only what the build does: every `eucora` command that the README
//! and the docs show in a shell block, that the runbook names inline, and that `--help` gives as
//! an example, is parsed by the command line itself, so a renamed command or flag breaks the
//! build, not a reader. Placeholders (`ID`, `"$ID"`) and fragments that leave out a required
//! argument are fine; an unknown subcommand or flag is not.

use clap::error::ErrorKind;
use clap::Parser;
use eucora::config::Cli;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// Splits one shell command into words: quotes group, `\` escapes, and the command ends at an
/// unquoted `#`, `|`, `>`, `<`, `&`, `;` or `)`.
fn words(command: &str) -> Vec<String> {
    let (mut words, mut word, mut quote, mut escaped) = (Vec::new(), None::<String>, None, false);
    for c in command.chars() {
        if escaped {
            word.get_or_insert_with(String::new).push(c);
            escaped = false;
            continue;
        }
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some(_), c) => word.get_or_insert_with(String::new).push(c),
            (None, '\\') => escaped = true,
            (None, '"' | '\'') => {
                quote = Some(c);
                word.get_or_insert_with(String::new);
            }
            (None, '#' | '|' | '>' | '<' | '&' | ';' | ')') => break,
            (None, c) if c.is_whitespace() => words.extend(word.take()),
            (None, c) => word.get_or_insert_with(String::new).push(c),
        }
    }
    words.extend(word);
    words
}

/// The `eucora` command a line runs, if any: `eucora …` anywhere (after `VAR=$(`, an environment
/// assignment or a loop's `do`), or `cargo run --release -- …`.
fn command_in(line: &str) -> Option<Vec<String>> {
    let args = if let Some((_, rest)) = line.split_once("cargo run --release -- ") {
        rest
    } else {
        let at = line
            .match_indices("eucora ")
            .map(|(i, _)| i)
            .find(|&i| i == 0 || matches!(line.as_bytes()[i - 1], b' ' | b'(' | b'`' | b'$'))?;
        &line[at + "eucora ".len()..]
    };
    let mut words = words(args);
    words.insert(0, "eucora".into());
    Some(words)
}

/// Every shell block's `eucora` commands in a Markdown file, with their line numbers;
/// continuation lines (`\` at the end) are joined.
fn in_shell_blocks(file: &str) -> Vec<(String, usize, Vec<String>)> {
    let text = std::fs::read_to_string(format!("{ROOT}/{file}")).unwrap();
    let (mut found, mut in_block, mut pending) = (Vec::new(), false, String::new());
    for (n, line) in text.lines().enumerate() {
        if line.starts_with("```") {
            in_block = !in_block;
            pending.clear();
            continue;
        }
        if !in_block {
            continue;
        }
        if let Some(head) = line.strip_suffix('\\') {
            pending.push_str(head);
            continue;
        }
        let whole = std::mem::take(&mut pending) + line;
        if let Some(command) = command_in(&whole) {
            found.push((file.to_string(), n + 1, command));
        }
    }
    found
}

/// Inline code spans that begin with `eucora `, with their line numbers; bracketed optional
/// parts (`[--key KEYFILE]`) are dropped.
fn in_inline_spans(file: &str) -> Vec<(String, usize, Vec<String>)> {
    let text = std::fs::read_to_string(format!("{ROOT}/{file}")).unwrap();
    let mut found = Vec::new();
    for (n, line) in text.lines().enumerate() {
        for (i, span) in line.split('`').enumerate() {
            if i % 2 == 1 && span.starts_with("eucora ") {
                let without_options: String = span
                    .split('[')
                    .enumerate()
                    .map(|(j, part)| {
                        if j == 0 {
                            part
                        } else {
                            part.split_once(']').map_or("", |p| p.1)
                        }
                    })
                    .collect();
                found.extend(command_in(&without_options).map(|c| (file.to_string(), n + 1, c)));
            }
        }
    }
    found
}

/// The `Example: eucora …` lines of the command line's own help.
fn help_examples() -> Vec<(String, usize, Vec<String>)> {
    let mut found = Vec::new();
    for file in [
        "src/config.rs",
        "src/config/deployments.rs",
        "src/config/evidence.rs",
    ] {
        let text = std::fs::read_to_string(format!("{ROOT}/{file}")).unwrap();
        for (n, line) in text.lines().enumerate() {
            if let Some((_, example)) = line.split_once("/// Example: ") {
                found.extend(command_in(example).map(|c| (file.to_string(), n + 1, c)));
            }
        }
    }
    found
}

#[test]
fn every_command_the_docs_show_is_one_the_command_line_knows() {
    let mut docs = vec!["README.md".to_string()];
    for entry in std::fs::read_dir(format!("{ROOT}/docs")).unwrap() {
        let name = entry.unwrap().file_name().to_string_lossy().to_string();
        if name.ends_with(".md") {
            docs.push(format!("docs/{name}"));
        }
    }
    let mut commands: Vec<_> = docs.iter().flat_map(|f| in_shell_blocks(f)).collect();
    commands.extend(in_inline_spans("docs/runbook.md"));
    commands.extend(help_examples());
    assert!(
        commands.len() > 60,
        "only {} commands found",
        commands.len()
    );
    let wrong: Vec<String> = commands
        .iter()
        .filter_map(|(file, line, words)| {
            let error = Cli::try_parse_from(words).err()?;
            match error.kind() {
                // A placeholder where a value goes, or a fragment leaving out what it must say.
                ErrorKind::ValueValidation
                | ErrorKind::InvalidValue
                | ErrorKind::MissingRequiredArgument
                | ErrorKind::MissingSubcommand
                | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
                | ErrorKind::DisplayHelp
                | ErrorKind::DisplayVersion => None,
                _ => Some(format!("{file}:{line}: {}: {error}", words.join(" "))),
            }
        })
        .collect();
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

/// The create body docs/api.md shows is one the API takes, as written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_create_body_the_api_docs_show_is_accepted() {
    let api = std::fs::read_to_string(format!("{ROOT}/docs/api.md")).unwrap();
    let (_, after) = api.split_once("### The create body").expect("the section");
    let example = after
        .split_once("```json\n")
        .and_then(|(_, rest)| rest.split_once("```"))
        .expect("a JSON block")
        .0;
    let body: serde_json::Value = serde_json::from_str(example).expect("the example is JSON");
    let app = crate::helpers::TestApp::spawn(crate::helpers::Backend::Sqlite).await;
    let crew = crate::helpers::Crew::new(&app);
    let created = app.create(&crew.requester, body.clone()).await;
    assert_eq!(created.status, 201, "{created:#?}");
    for field in ["app_name", "version", "target_ring", "change_ref"] {
        assert_eq!(created.body[field], body[field], "{field}");
    }
}

/// Every relative link in the README and the docs names a file in the repository: the docs
/// stand alone.
#[test]
fn every_link_in_the_docs_is_to_a_file_in_the_repository() {
    let root = std::path::Path::new(ROOT).canonicalize().unwrap();
    let mut files = vec![root.join("README.md")];
    for entry in std::fs::read_dir(root.join("docs")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "md") {
            files.push(path);
        }
    }
    let mut broken = Vec::new();
    for file in &files {
        let text = std::fs::read_to_string(file).unwrap();
        for (_, rest) in text.match_indices("](").map(|(i, _)| text.split_at(i + 2)) {
            let Some(target) = rest.split(')').next() else {
                continue;
            };
            let target = target.split('#').next().unwrap_or_default();
            if target.is_empty() || target.contains("://") || target.starts_with("mailto:") {
                continue;
            }
            let resolved = file.parent().unwrap().join(target);
            match resolved.canonicalize() {
                Ok(path) if path.starts_with(&root) => {}
                _ => broken.push(format!("{}: {target}", file.display())),
            }
        }
    }
    assert!(broken.is_empty(), "{broken:#?}");
}
