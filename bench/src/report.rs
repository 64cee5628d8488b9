//! Results: one row per figure with a cell per supervisor, the printed table, the JSON file
//! that keeps a run, and `BENCHMARKS.md` generated from it.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;
use std::process::Command;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use crate::driver::Kind;

/// Which direction is good for a figure (decides how the ratio is taken).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Better {
    Lower,
    Higher,
    /// Descriptive figures (e.g. restarts made): no ratio.
    Neither,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Cell {
    Num(f64),
    Text(String),
    /// Not measured, and why.
    Missing(String),
}

impl Cell {
    fn show(&self) -> String {
        match self {
            Cell::Num(v) => fmt_num(*v),
            Cell::Text(t) => t.clone(),
            Cell::Missing(why) => format!("n/a ({why})"),
        }
    }
}

fn fmt_num(v: f64) -> String {
    let a = v.abs();
    if a == 0.0 {
        "0".into()
    } else if a >= 1000.0 {
        format!("{v:.0}")
    } else if a >= 10.0 {
        format!("{v:.1}")
    } else if a >= 0.1 {
        format!("{v:.2}")
    } else {
        format!("{v:.3}")
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Row {
    /// `1`, `3b`, … (the row number and a letter).
    pub id: String,
    pub metric: String,
    pub unit: String,
    pub better: Better,
    pub cells: BTreeMap<Kind, Cell>,
}

impl Row {
    pub fn new(id: &str, metric: &str, unit: &str, better: Better) -> Row {
        Row {
            id: id.into(),
            metric: metric.into(),
            unit: unit.into(),
            better,
            cells: BTreeMap::new(),
        }
    }

    /// How many times better ours is than `other` (> 1: ours wins), when both are numbers.
    pub fn ratio(&self, other: Kind) -> Option<f64> {
        let (Some(Cell::Num(ours)), Some(Cell::Num(theirs))) =
            (self.cells.get(&Kind::Ours), self.cells.get(&other))
        else {
            return None;
        };
        let r = match self.better {
            Better::Lower => theirs / ours,
            Better::Higher => ours / theirs,
            Better::Neither => return None,
        };
        r.is_finite().then_some(r)
    }
}

/// A whole run: machine, rows, notes.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Results {
    pub machine: BTreeMap<String, String>,
    pub rows: Vec<Row>,
    pub notes: Vec<String>,
}

impl Results {
    pub fn load(path: &Path) -> Result<Results> {
        if !path.exists() {
            return Ok(Results::default());
        }
        let text = std::fs::read_to_string(path)?;
        let mut res: Results =
            serde_json::from_str(&text).with_context(|| format!("reading {}", path.display()))?;
        res.rows.sort_by_key(|r| row_key(&r.id));
        Ok(res)
    }

    pub fn save(&self, path: &Path) -> Result<()> {
        std::fs::write(path, serde_json::to_string_pretty(self)? + "\n")
            .with_context(|| format!("writing {}", path.display()))
    }

    /// Sets one cell, creating the row if needed (a re-run replaces the old figure).
    pub fn set(&mut self, template: &Row, kind: Kind, cell: Cell) {
        let row = match self.rows.iter_mut().position(|r| r.id == template.id) {
            Some(i) => &mut self.rows[i],
            None => {
                self.rows.push(Row {
                    cells: BTreeMap::new(),
                    ..template.clone()
                });
                self.rows.sort_by_key(|r| row_key(&r.id));
                let i = self
                    .rows
                    .iter()
                    .position(|r| r.id == template.id)
                    .unwrap_or(0);
                &mut self.rows[i]
            }
        };
        row.metric = template.metric.clone();
        row.cells.insert(kind, cell);
    }

    /// Takes every cell and note of `other` (a row group run on its own thread).
    pub fn merge(&mut self, other: Results) {
        for row in other.rows {
            for (k, c) in &row.cells {
                self.set(&row, *k, c.clone());
            }
        }
        for n in other.notes {
            self.note(n);
        }
    }

    pub fn note(&mut self, text: String) {
        if !self.notes.contains(&text) {
            self.notes.push(text);
        }
    }

    /// The table, as Markdown (also what is printed).
    pub fn table(&self) -> String {
        let mut t = String::from(
            "| row | figure | piku-supervisor | uWSGI emperor | supervisord | ours vs uWSGI | ours vs supervisord |\n\
             |---|---|---|---|---|---|---|\n",
        );
        for r in &self.rows {
            let cell = |k: Kind| r.cells.get(&k).map_or_else(|| "–".to_string(), Cell::show);
            let ratio = |k: Kind| {
                r.ratio(k)
                    .map_or_else(|| "–".to_string(), |x| format!("{}×", fmt_num(x)))
            };
            let unit = if r.unit.is_empty() {
                String::new()
            } else {
                format!(" ({})", r.unit)
            };
            let _ = writeln!(
                t,
                "| {} | {}{} | {} | {} | {} | {} | {} |",
                r.id,
                r.metric,
                unit,
                cell(Kind::Ours),
                cell(Kind::Uwsgi),
                cell(Kind::Supervisord),
                ratio(Kind::Uwsgi),
                ratio(Kind::Supervisord)
            );
        }
        t
    }
}

/// Sorts `3b` after `3a`, `10` after `9`, and `1.10a` after `1.1c`.
fn row_key(id: &str) -> Vec<(u32, String)> {
    id.split('.')
        .map(|part| {
            let digits: String = part.chars().take_while(char::is_ascii_digit).collect();
            let n = digits.parse().unwrap_or(u32::MAX);
            (n, part[digits.len()..].to_string())
        })
        .collect()
}

/// `nproc`, memory, kernel, tool versions and load: what the figures were measured on.
pub fn describe_machine() -> BTreeMap<String, String> {
    let sh = |cmd: &str| -> String {
        Command::new("sh")
            .arg("-c")
            .arg(cmd)
            .output()
            .map(|o| {
                let s = String::from_utf8_lossy(&o.stdout).into_owned()
                    + &String::from_utf8_lossy(&o.stderr);
                s.lines().next().unwrap_or("").trim().to_string()
            })
            .unwrap_or_default()
    };
    BTreeMap::from([
        ("nproc".into(), sh("nproc")),
        ("memory".into(), sh("grep MemTotal /proc/meminfo")),
        ("kernel".into(), sh("uname -srm")),
        (
            "os".into(),
            sh(". /etc/os-release && echo \"$PRETTY_NAME\""),
        ),
        ("uwsgi".into(), sh("uwsgi --version")),
        ("supervisord".into(), sh("supervisord --version")),
        ("python3".into(), sh("/usr/bin/python3 --version")),
        ("loadavg at start".into(), sh("cat /proc/loadavg")),
        (
            "piku-rs commit".into(),
            sh("git log -1 --format='%h %cd' --date=iso 2>/dev/null"),
        ),
        ("date".into(), sh("date -u +%Y-%m-%dT%H:%MZ")),
    ])
}

/// `BENCHMARKS.md`: the machine, the table, how to run, and the notes of the run.
pub fn markdown(res: &Results, intro: &str, reading: &str) -> String {
    let mut m =
        String::from("# Benchmarks: piku-supervisor vs the uWSGI emperor vs supervisord\n\n");
    m.push_str(intro);
    m.push_str("\n## Machine of this run\n\n");
    for (k, v) in &res.machine {
        let _ = writeln!(m, "- {k}: `{v}`");
    }
    m.push_str("\n## Results\n\nRatios say how many times better ours is (> 1×: ours wins; < 1×: ours is behind): \
                theirs ÷ ours for costs and latencies, ours ÷ theirs for throughput.\n\n");
    m.push_str(&res.table());
    let behind: Vec<String> = res
        .rows
        .iter()
        .flat_map(|r| {
            [Kind::Uwsgi, Kind::Supervisord]
                .into_iter()
                .filter_map(move |k| r.ratio(k).filter(|x| *x < 0.995).map(|x| (r, k, x)))
        })
        .map(|(r, k, x)| {
            format!(
                "- row {} ({}): {}× against {}",
                r.id,
                r.metric.trim_start_matches(['…', ' ']),
                fmt_num(x),
                k.label()
            )
        })
        .collect();
    m.push_str("\n## Where ours is behind in this run\n\n");
    if behind.is_empty() {
        m.push_str("No row with a ratio below 1×.\n");
    } else {
        m.push_str(&behind.join("\n"));
        m.push('\n');
    }
    m.push('\n');
    m.push_str(reading);
    if !res.notes.is_empty() {
        m.push_str("\n## Notes of this run\n\n");
        for n in &res.notes {
            let _ = writeln!(m, "- {n}");
        }
    }
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markdown_lists_rows_where_ours_is_behind() {
        let mut res = Results::default();
        let row = Row::new("7a", "lines/s", "lines/s", Better::Higher);
        res.set(&row, Kind::Ours, Cell::Num(50.0));
        res.set(&row, Kind::Supervisord, Cell::Num(100.0));
        res.set(&row, Kind::Uwsgi, Cell::Num(25.0));
        let md = markdown(&res, "intro\n", "reading\n");
        assert!(
            md.contains("- row 7a (lines/s): 0.50× against supervisord"),
            "{md}"
        );
        assert!(!md.contains("against uWSGI"), "{md}");
    }

    #[test]
    fn ratio_follows_direction() {
        let mut r = Row::new("1", "rss", "MiB", Better::Lower);
        r.cells.insert(Kind::Ours, Cell::Num(2.0));
        r.cells.insert(Kind::Uwsgi, Cell::Num(20.0));
        assert_eq!(r.ratio(Kind::Uwsgi), Some(10.0));
        r.better = Better::Higher;
        assert_eq!(r.ratio(Kind::Uwsgi), Some(0.1));
        assert_eq!(r.ratio(Kind::Supervisord), None);
    }

    #[test]
    fn rows_sort_numerically_and_rerun_replaces() {
        let mut res = Results::default();
        for id in ["1.10a", "1.1c", "1.1a"] {
            res.set(
                &Row::new(id, "m", "MiB", Better::Lower),
                Kind::Ours,
                Cell::Num(1.0),
            );
        }
        let ids: Vec<&str> = res.rows.iter().map(|r| r.id.as_str()).collect();
        assert_eq!(ids, ["1.1a", "1.1c", "1.10a"]);
        res.rows.clear();
        res.set(
            &Row::new("10", "b", "s", Better::Lower),
            Kind::Ours,
            Cell::Num(1.0),
        );
        res.set(
            &Row::new("3a", "a", "s", Better::Lower),
            Kind::Ours,
            Cell::Num(1.0),
        );
        res.set(
            &Row::new("3a", "a", "s", Better::Lower),
            Kind::Ours,
            Cell::Num(2.0),
        );
        assert_eq!(
            res.rows.iter().map(|r| r.id.as_str()).collect::<Vec<_>>(),
            ["3a", "10"]
        );
        assert_eq!(res.rows[0].cells[&Kind::Ours], Cell::Num(2.0));
        assert!(res.table().contains("| 3a | a (s) | 2.00 |"));
    }
}

/// `doc` with the section under `heading` replaced by `section` (appended when absent). A
/// section runs from its heading to the next `## ` heading or the end. For the subcommands
/// that write only their own part of `BENCHMARKS.md`.
pub fn put_section(doc: &str, heading: &str, section: &str) -> String {
    let section = section.trim_end();
    let Some((start, end)) = section_span(doc, heading) else {
        let sep = if doc.is_empty() || doc.ends_with("\n\n") {
            ""
        } else if doc.ends_with('\n') {
            "\n"
        } else {
            "\n\n"
        };
        return format!("{doc}{sep}{section}\n");
    };
    let rest = &doc[end..];
    let gap = if rest.is_empty() { "\n" } else { "\n\n" };
    format!("{}{section}{gap}{rest}", &doc[..start])
}

/// The section under `heading` in `doc`, if there is one.
pub fn get_section<'a>(doc: &'a str, heading: &str) -> Option<&'a str> {
    let (start, end) = section_span(doc, heading)?;
    Some(doc[start..end].trim_end())
}

fn section_span(doc: &str, heading: &str) -> Option<(usize, usize)> {
    let start = doc.match_indices(heading).map(|(i, _)| i).find(|&i| {
        let rest = &doc[i + heading.len()..];
        (i == 0 || doc[..i].ends_with('\n')) && (rest.is_empty() || rest.starts_with('\n'))
    })?;
    let after = start + heading.len();
    let end = doc[after..]
        .find("\n## ")
        .map_or(doc.len(), |i| after + i + 1);
    Some((start, end))
}

#[cfg(test)]
mod section_tests {
    use super::*;

    #[test]
    fn a_section_is_replaced_in_place_or_appended() {
        let h = "## W";
        let doc = "# T\n\n## A\n\na\n\n## Where\n\nw\n";
        let once = put_section(doc, h, "## W\n\nnew\n");
        assert_eq!(once, format!("{doc}\n## W\n\nnew\n"));
        let middle = "# T\n\n## W\n\nold\n\n## Z\n\nz\n";
        assert_eq!(
            put_section(middle, h, "## W\n\nnew\n"),
            "# T\n\n## W\n\nnew\n\n## Z\n\nz\n"
        );
        assert_eq!(put_section(&once, h, "## W\n\nnew\n"), once);
        assert_eq!(get_section(middle, h), Some("## W\n\nold"));
        assert_eq!(get_section(doc, h), None);
    }
}
