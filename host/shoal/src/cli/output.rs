//! How list and show commands print: `-o table` (columns for people, by `comfy-table`), `-o json`
//! (the API's answer, pretty, for scripts) or `-q` (only the ids, one per line).

use clap::{Args, ValueEnum};
use comfy_table::{ContentArrangement, Table as Grid, presets};
use serde_json::Value;

use super::print;

/// Output format of the CLI's answers.
#[derive(ValueEnum, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) enum Format {
    /// Columns for people.
    #[default]
    Table,
    /// The API's JSON answer, pretty-printed; its field names are stable.
    Json,
}

/// `-o` and `-q`, on every command that talks to the API.
#[derive(Args, Debug, Clone, Copy, Default)]
pub(crate) struct Output {
    /// Output format: `table` for people, `json` (the API's JSON, stable field names) for scripts.
    #[arg(short = 'o', long = "output", value_enum, default_value_t = Format::Table, global = true)]
    pub(crate) format: Format,
    /// Print only the ids (names, digests) of what is listed or shown, one per line.
    #[arg(short = 'q', long, global = true)]
    pub(crate) quiet: bool,
}

/// Columns and rows of a table, with the id of each row for `-q`.
pub(crate) struct Table {
    header: Vec<&'static str>,
    rows: Vec<Vec<String>>,
    ids: Vec<String>,
}

impl Table {
    pub(crate) fn new(header: &[&'static str]) -> Table {
        Table { header: header.to_vec(), rows: Vec::new(), ids: Vec::new() }
    }

    /// A row; its first cell is its id.
    pub(crate) fn row(&mut self, cells: Vec<String>) {
        self.ids.push(cells.first().cloned().unwrap_or_default());
        self.rows.push(cells);
    }

    /// Rows of `items` (the array at `value[field]`), each made by `cells`.
    pub(crate) fn rows(mut self, items: &Value, cells: impl Fn(&Value) -> Vec<String>) -> Table {
        for item in items.as_array().into_iter().flatten() {
            self.row(cells(item));
        }
        self
    }

    /// The ids of the rows.
    pub(crate) fn ids(&self) -> &[String] {
        &self.ids
    }

    /// The table as text: no wrapping, so a long cell widens its column and never splits a row.
    pub(crate) fn render(&self) -> String {
        let mut grid = Grid::new();
        grid.load_preset(presets::NOTHING).set_content_arrangement(ContentArrangement::Disabled);
        grid.set_header(self.header.iter().copied());
        // An empty cell shows as `-`: every row has a word in every column.
        for row in &self.rows {
            grid.add_row(row.iter().map(|c| if c.is_empty() { "-" } else { c.as_str() }));
        }
        // Every cell has one space of padding each side: drop the first column's left one.
        let text = grid.to_string();
        text.lines().map(|l| l.strip_prefix(' ').unwrap_or(l).trim_end()).collect::<Vec<_>>().join("\n")
    }
}

impl Output {
    /// Print an answer: its JSON, the table's ids, or the table.
    pub(crate) fn emit(&self, answer: &Value, table: Table) {
        match (self.quiet, self.format) {
            (true, _) => table.ids().iter().for_each(|id| println!("{id}")),
            (false, Format::Json) => print(answer),
            (false, Format::Table) => println!("{}", table.render()),
        }
    }

    /// Print one object: its JSON, its id, or a FIELD/VALUE table of its fields followed by
    /// `more` (tables of its parts, e.g. an app's tasks).
    pub(crate) fn emit_one(&self, answer: &Value, id: &str, more: &[(&str, Table)]) {
        match (self.quiet, self.format) {
            (true, _) => println!("{id}"),
            (false, Format::Json) => print(answer),
            (false, Format::Table) => {
                let skip: Vec<&str> = more.iter().map(|(field, _)| *field).collect();
                println!("{}", fields(answer, &skip).render());
                for (field, table) in more {
                    println!("\n{}:", field.to_uppercase());
                    println!("{}", table.render());
                }
            }
        }
    }

    /// Print the answer to a change (create, delete, …): its JSON, `id`, or `message`.
    pub(crate) fn emit_done(&self, answer: &Value, id: &str, message: &str) {
        match (self.quiet, self.format) {
            (true, _) => println!("{id}"),
            (false, Format::Json) => print(answer),
            (false, Format::Table) => println!("{message}"),
        }
    }

    /// Whether answers are for people (progress lines go to stdout) or for scripts (stderr).
    pub(crate) fn for_people(&self) -> bool {
        !self.quiet && self.format == Format::Table
    }
}

/// A FIELD/VALUE table of an object's fields but `skip`.
fn fields(v: &Value, skip: &[&str]) -> Table {
    let mut table = Table::new(&["FIELD", "VALUE"]);
    for (k, value) in v.as_object().into_iter().flatten() {
        if !skip.contains(&k.as_str()) {
            table.row(vec![k.clone(), cell(value)]);
        }
    }
    table
}

/// A JSON value as one cell: strings bare, `-` for null, an object of scalars as `k=v,…`, an
/// array of scalars comma-separated, anything deeper as compact JSON.
pub(crate) fn cell(v: &Value) -> String {
    let scalar = |v: &Value| !v.is_object() && !v.is_array();
    match v {
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        Value::Array(items) if items.iter().all(scalar) => items.iter().map(cell).collect::<Vec<_>>().join(","),
        Value::Object(map) if map.values().all(scalar) => {
            map.iter().map(|(k, v)| format!("{k}={}", cell(v))).collect::<Vec<_>>().join(",")
        }
        other => other.to_string(),
    }
}

/// `v[field]` as a cell.
pub(crate) fn at(v: &Value, field: &str) -> String {
    cell(&v[field])
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn a_long_id_widens_its_column_and_keeps_every_other_column() {
        let long = "x".repeat(300);
        let mut table = Table::new(&["ID", "STATE", "HOST"]);
        table.row(vec![long.clone(), "running".into(), "h1".into()]);
        table.row(vec!["short".into(), "failed".into(), String::new()]);
        let text = table.render();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3, "{text}");
        assert!(lines[1].contains(&long) && lines[1].contains("running") && lines[1].ends_with("h1"), "{text}");
        let column = |line: &str, word: &str| line.find(word).expect("the word is in the line");
        assert_eq!(column(lines[0], "STATE"), column(lines[2], "failed"), "{text}");
        assert_eq!(lines[2].split_whitespace().collect::<Vec<_>>(), ["short", "failed", "-"], "{text}");
        assert_eq!(table.ids(), [long, "short".to_owned()]);
    }

    #[test]
    fn cells_of_json() {
        assert_eq!(cell(&json!(null)), "-");
        assert_eq!(cell(&json!({"a": "1", "b": 2})), "a=1,b=2");
        assert_eq!(cell(&json!([1, 2])), "1,2");
        assert_eq!(cell(&json!([{"a": 1}])), r#"[{"a":1}]"#);
    }
}
