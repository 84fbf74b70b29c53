//! Runner labels. GitHub compares labels case-insensitively, and a job may run on any runner whose
//! labels include all of the job's labels. This module must never decide which *runner* takes a
//! job — GitHub does that — only which pools could serve it.

use std::collections::BTreeSet;

/// A set of labels, normalised to lower case so that `Linux` and `linux` are one label.
#[derive(
    Debug,
    Clone,
    Default,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    serde::Serialize,
    serde::Deserialize,
)]
pub struct Labels(BTreeSet<String>);

impl Labels {
    pub fn new<I, S>(labels: I) -> Labels
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        Labels(
            labels
                .into_iter()
                .map(|l| l.as_ref().trim().to_lowercase())
                .collect(),
        )
    }

    /// True when a runner with `self` labels may take a job asking for `job`.
    pub fn serves(&self, job: &Labels) -> bool {
        job.0.is_subset(&self.0)
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = &str> {
        self.0.iter().map(String::as_str)
    }

    pub fn to_vec(&self) -> Vec<String> {
        self.0.iter().cloned().collect()
    }
}

impl std::fmt::Display for Labels {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let v: Vec<&str> = self.iter().collect();
        write!(f, "[{}]", v.join(", "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subset_matching_is_case_insensitive() {
        let pool = Labels::new(["self-hosted", "Linux", "x64"]);
        let cases: &[(&[&str], bool)] = &[
            (&["self-hosted"], true),
            (&["self-hosted", "linux"], true),
            (&["SELF-HOSTED", "LINUX", "X64"], true),
            (&["self-hosted", "gpu"], false),
            (&[], true),
        ];
        for (job, want) in cases {
            assert_eq!(pool.serves(&Labels::new(job.iter())), *want, "job {job:?}");
        }
    }
}
