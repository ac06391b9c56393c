//! `hostdp run --partition K/N`: which part of the scenario × kernel × profile matrix one CI
//! runner takes, so that N runners given the same arguments cover the matrix once between them.
//!
//! The rule is by index, round robin, as nextest's `--partition count:K/N`: the matrix's cells
//! (file, kernel, profile) are sorted, and the cell at 0-based index `i` belongs to part
//! `i % N + 1`. Parts differ in size by at most one cell. The parts depend on the whole matrix,
//! so every runner must be given the same files, kernels and profile; adding a file may move
//! other cells to another part (a hash of the cell would not, but would balance worse).

use std::fmt;

/// One part of N, 1-based.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Partition {
    pub part: usize,
    pub count: usize,
}

/// Why a `K/N` argument was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PartitionError {
    #[error("{0:?} is not K/N: give part K of N in whole numbers, e.g. 1/3")]
    Syntax(String),
    #[error("{0:?}: N must be at least 1")]
    NoParts(String),
    #[error("{given:?}: K must be between 1 and {count} (parts are numbered from 1)")]
    OutOfRange { given: String, count: usize },
}

/// One cell of the matrix: a scenario file on a kernel under a profile.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Cell {
    /// The file as given on the command line (or found in a folder given there).
    pub file: String,
    /// The `--kernel` argument (`host` when none was given).
    pub kernel: String,
    /// The profile the file runs under (its own, or `--profile`'s).
    pub profile: String,
}

impl Partition {
    /// Parses `K/N` (1 ≤ K ≤ N); nextest's `count:K/N` is taken too.
    pub fn parse(s: &str) -> Result<Partition, PartitionError> {
        let body = s.trim().strip_prefix("count:").unwrap_or(s.trim());
        let (k, n) = body.split_once('/').ok_or_else(|| PartitionError::Syntax(s.to_string()))?;
        let num = |x: &str| x.trim().parse::<usize>().map_err(|_| PartitionError::Syntax(s.to_string()));
        let (part, count) = (num(k)?, num(n)?);
        if count == 0 {
            return Err(PartitionError::NoParts(s.to_string()));
        }
        if part == 0 || part > count {
            return Err(PartitionError::OutOfRange { given: s.to_string(), count });
        }
        Ok(Partition { part, count })
    }

    /// The cells of this part, sorted. `cells` is the whole matrix, in any order; duplicates
    /// count once.
    pub fn select(&self, cells: &[Cell]) -> Vec<Cell> {
        let mut all = cells.to_vec();
        all.sort();
        all.dedup();
        all.into_iter().enumerate().filter(|(i, _)| i % self.count + 1 == self.part).map(|(_, c)| c).collect()
    }
}

impl fmt::Display for Partition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.part, self.count)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    fn matrix() -> Vec<Cell> {
        let mut v = Vec::new();
        for f in ["scenarios/b.yaml", "scenarios/a.yaml", "scenarios/c.yaml", "scenarios/d.yaml"] {
            for k in ["host", "debian-6.1", "debian-6.12"] {
                for p in ["v1.14.4", "v1.16"] {
                    v.push(Cell { file: f.into(), kernel: k.into(), profile: p.into() });
                }
            }
        }
        v
    }

    #[test]
    fn parts_are_disjoint_and_cover_the_matrix() {
        let all = matrix();
        for n in 1..=30 {
            let mut seen = BTreeSet::new();
            let mut sizes = Vec::new();
            for k in 1..=n {
                let part = Partition { part: k, count: n }.select(&all);
                sizes.push(part.len());
                for c in part {
                    assert!(seen.insert(c.clone()), "{c:?} is in two parts of {n}");
                }
            }
            assert_eq!(seen, all.iter().cloned().collect::<BTreeSet<_>>(), "the parts of {n} miss cells");
            let (lo, hi) = (sizes.iter().min().unwrap(), sizes.iter().max().unwrap());
            assert!(hi - lo <= 1, "parts of {n} unbalanced: {sizes:?}");
        }
    }

    #[test]
    fn a_part_does_not_depend_on_the_order_given() {
        let all = matrix();
        let mut rev = all.clone();
        rev.reverse();
        let p = Partition { part: 2, count: 3 };
        assert_eq!(p.select(&all), p.select(&rev));
        // Round robin over the sorted cells: the first cell of part 2 is the second cell.
        let mut sorted = all.clone();
        sorted.sort();
        assert_eq!(p.select(&all)[0], sorted[1]);
    }

    #[test]
    fn parse_accepts_k_of_n_and_refuses_the_rest() {
        assert_eq!(Partition::parse("1/3"), Ok(Partition { part: 1, count: 3 }));
        assert_eq!(Partition::parse("count:3/3"), Ok(Partition { part: 3, count: 3 }));
        assert_eq!(Partition::parse("1/3").unwrap().to_string(), "1/3");
        assert!(matches!(Partition::parse("3"), Err(PartitionError::Syntax(_))));
        assert!(matches!(Partition::parse("a/3"), Err(PartitionError::Syntax(_))));
        assert!(matches!(Partition::parse("-1/3"), Err(PartitionError::Syntax(_))));
        assert!(matches!(Partition::parse("1/0"), Err(PartitionError::NoParts(_))));
        assert!(matches!(Partition::parse("0/3"), Err(PartitionError::OutOfRange { .. })));
        assert!(matches!(Partition::parse("4/3"), Err(PartitionError::OutOfRange { count: 3, .. })));
        assert_eq!(
            Partition::parse("4/3").unwrap_err().to_string(),
            "\"4/3\": K must be between 1 and 3 (parts are numbered from 1)"
        );
    }
}
