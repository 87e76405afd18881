//! The `shoal …` commands in README.md and sdk/README.md parse: every command line in their
//! `sh` code blocks goes through the CLI's parser (nothing runs), so the docs cannot show a
//! flag, verb or argument order that `shoal` refuses.

use clap::Parser;

use super::Cli;

/// The words of a shell command line: quotes group, `#` starts a comment, and the command ends
/// at `&`, `|`, `;`, `&&` or a redirection. `$(…)` and `"$X"` are one word each.
fn words(line: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut word = String::new();
    let mut quote: Option<char> = None;
    let mut depth = 0;
    let mut started = false;
    let mut placeholder = false;
    for c in line.chars() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some(_), c) => word.push(c),
            (None, '\'' | '"') => {
                quote = Some(c);
                started = true;
            }
            (None, '(') if word.ends_with('$') => {
                depth += 1;
                word.push(c);
            }
            (None, ')') if depth > 0 => {
                depth -= 1;
                word.push(c);
            }
            (None, c) if depth > 0 => word.push(c),
            (None, '#') if word.is_empty() && !started => break,
            (None, '&' | '|' | ';') => break,
            // A placeholder, `<task-id>`, is one word.
            (None, '<') if word.is_empty() => {
                placeholder = true;
                word.push(c);
                started = true;
            }
            (None, '>') if placeholder => {
                placeholder = false;
                word.push(c);
            }
            // A redirection ends the command's words (`2> log`: the `2` is the descriptor).
            (None, '>' | '<') => {
                if word.chars().all(|d| d.is_ascii_digit()) {
                    word.clear();
                    started = false;
                }
                break;
            }
            (None, c) if c.is_whitespace() => {
                if started || !word.is_empty() {
                    out.push(std::mem::take(&mut word));
                }
                started = false;
            }
            (None, c) => {
                word.push(c);
                started = true;
            }
        }
    }
    if started || !word.is_empty() {
        out.push(word);
    }
    out
}

/// The `shoal` command lines of the `sh` blocks of a Markdown text (continued lines joined).
fn commands(markdown: &str) -> Vec<String> {
    let mut found = Vec::new();
    let mut in_sh = false;
    let mut pending = String::new();
    for line in markdown.lines() {
        let trimmed = line.trim();
        if trimmed.starts_with("```") {
            in_sh = !in_sh && (trimmed == "```sh" || trimmed == "```bash");
            continue;
        }
        if !in_sh {
            continue;
        }
        pending.push_str(trimmed.trim_end_matches('\\'));
        pending.push(' ');
        if trimmed.ends_with('\\') {
            continue;
        }
        // The loop variable of `for i in 1 2 3; do shoal … m$i …` as one of its values.
        let command = std::mem::take(&mut pending).replace("$i", "1");
        // A command after `&&` or `until …;` is checked too.
        for part in command.split("&& ").chain(command.split("; ").skip(1)) {
            if let Some(rest) = part.trim().strip_prefix("until ") {
                found.push(rest.trim().to_owned());
            } else {
                found.push(part.trim().to_owned());
            }
        }
    }
    found
        .into_iter()
        .map(|c| match c.find("shoal ") {
            // `SHOAL_TOKEN=… shoal …`: the command starts at `shoal`.
            Some(at) if c[..at].split_whitespace().all(|w| w.contains('=')) => c[at..].to_owned(),
            _ => c,
        })
        .filter(|c| c.starts_with("shoal "))
        .collect()
}

#[test]
fn every_shoal_command_in_the_readmes_parses() {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../..");
    let mut checked = 0;
    for doc in ["README.md", "sdk/README.md"] {
        let text = std::fs::read_to_string(format!("{root}/{doc}")).expect("read the doc");
        for command in commands(&text) {
            let argv = words(&command);
            if let Err(e) = Cli::try_parse_from(&argv) {
                panic!("{doc}: `{command}` does not parse:\n{e}");
            }
            checked += 1;
        }
    }
    assert!(checked > 50, "only {checked} commands found: the extraction is broken");
}

#[test]
fn shell_words() {
    assert_eq!(
        words(r#"shoal kv put shop cart/42 '{"a": 3}' --version 1  # note"#),
        ["shoal", "kv", "put", "shop", "cart/42", r#"{"a": 3}"#, "--version", "1"]
    );
    assert_eq!(
        words(r#"shoal service register w --check "$CHECK" &"#),
        ["shoal", "service", "register", "w", "--check", "$CHECK"]
    );
    assert_eq!(words("shoal app list -o json | jq ."), ["shoal", "app", "list", "-o", "json"]);
    assert_eq!(words("shoal x $(cat a | b) y"), ["shoal", "x", "$(cat a | b)", "y"]);
    assert_eq!(words("shoal kv put ns k ''"), ["shoal", "kv", "put", "ns", "k", ""]);
    assert_eq!(words("shoal --log-format json dev 2> log.jsonl"), ["shoal", "--log-format", "json", "dev"]);
    assert_eq!(words("shoal dev >out"), ["shoal", "dev"]);
    assert_eq!(words("shoal task logs -f <task-id> # follows"), ["shoal", "task", "logs", "-f", "<task-id>"]);
}
