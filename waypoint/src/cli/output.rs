//! Output as operators expect from istioctl: `-o text|json|yaml`, colour only on a terminal.

use std::io::IsTerminal as _;

/// `--output`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Format {
    /// For people: one block per result.
    Text,
    /// One JSON object per line.
    Json,
    /// One YAML list.
    Yaml,
}

/// Terminal colours for text output.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Colour {
    Red,
    Yellow,
    Cyan,
    Green,
}

/// Paints `text` when `enabled`: stdout is a terminal and `NO_COLOR` is unset
/// (<https://no-color.org>).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Painter {
    enabled: bool,
}

impl Painter {
    pub(crate) fn for_stdout() -> Painter {
        Painter {
            enabled: std::io::stdout().is_terminal()
                && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty()),
        }
    }

    pub(crate) fn paint(&self, colour: Colour, text: &str) -> String {
        if !self.enabled {
            return text.to_owned();
        }
        let code = match colour {
            Colour::Red => 31,
            Colour::Yellow => 33,
            Colour::Cyan => 36,
            Colour::Green => 32,
        };
        format!("\x1b[{code}m{text}\x1b[0m")
    }
}

/// `text` with every line indented by `by` spaces.
pub(crate) fn indent(text: &str, by: usize) -> String {
    let pad = " ".repeat(by);
    text.lines()
        .map(|l| {
            if l.is_empty() {
                String::new()
            } else {
                format!("{pad}{l}")
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}
