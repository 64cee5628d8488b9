//! [`Problems`]: every problem found in one input, reported together.
//!
//! A user fixing a Procfile, an ENV file or a SCALING file wants to see everything that is wrong
//! with it at once, not one line per push. The file parsers keep going past a bad line and return
//! every problem in file order. Displayed, the list is one line (`; ` between problems), so it
//! fits wherever a one-line error is printed; [`Problems::iter`] hands them out one by one to a
//! caller that prints one per line (the push does).

use std::fmt;

/// One or more problems of the same kind, in the order they were found. Never empty.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problems<E>(Vec<E>);

impl<E> Problems<E> {
    /// A list of one.
    pub fn one(problem: E) -> Problems<E> {
        Problems(vec![problem])
    }

    /// `Ok(value)` when `problems` is empty, else `Err` with all of them.
    pub fn check<T>(value: T, problems: Vec<E>) -> Result<T, Problems<E>> {
        if problems.is_empty() {
            Ok(value)
        } else {
            Err(Problems(problems))
        }
    }

    /// The problems, in the order found.
    pub fn iter(&self) -> std::slice::Iter<'_, E> {
        self.0.iter()
    }

    /// The problems as a slice, in the order found.
    pub fn as_slice(&self) -> &[E] {
        &self.0
    }

    pub fn into_vec(self) -> Vec<E> {
        self.0
    }
}

impl<'a, E> IntoIterator for &'a Problems<E> {
    type Item = &'a E;
    type IntoIter = std::slice::Iter<'a, E>;

    fn into_iter(self) -> Self::IntoIter {
        self.0.iter()
    }
}

impl<E: fmt::Display> fmt::Display for Problems<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, problem) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{problem}")?;
        }
        Ok(())
    }
}

/// Each problem's message is complete, so the list has no `source()`: printed with `{:#}` it
/// says every problem once.
impl<E: fmt::Display + fmt::Debug> std::error::Error for Problems<E> {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_list_prints_on_one_line_and_iterates_in_order() {
        let list = Problems::check((), vec!["line 1: a", "line 3: b"]).unwrap_err();
        assert_eq!(list.to_string(), "line 1: a; line 3: b");
        assert_eq!(
            list.iter().copied().collect::<Vec<_>>(),
            ["line 1: a", "line 3: b"]
        );
        assert_eq!(Problems::one("x").to_string(), "x");
        assert_eq!(Problems::<&str>::check(7, Vec::new()), Ok(7));
    }
}
