//! The one table style of the simulator's human output (the scenario report, the bench):
//! Markdown-shaped ASCII, so a terminal, a log and a document read the same table. No
//! colour: the output is as often a CI log or a pasted figure as a terminal.
//! Machine-readable output (JSON) never goes through here.

use comfy_table::{presets, CellAlignment, Table};

/// How a column's cells line up: text to the left, figures to the right.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Align {
    Left,
    Right,
}

/// A table with these columns, in the shared style.
pub fn new(columns: &[(&str, Align)]) -> Table {
    let mut table = Table::new();
    table.load_style(presets::ASCII_MARKDOWN);
    table.set_header(columns.iter().map(|(name, _)| *name));
    for (column, (_, align)) in table.column_iter_mut().zip(columns) {
        if *align == Align::Right {
            column.set_cell_alignment(CellAlignment::Right);
        }
    }
    table
}

/// The table as lines without trailing spaces, ending in a newline.
pub fn render(table: &Table) -> String {
    let mut out = table.trim_fmt();
    out.push('\n');
    out
}
