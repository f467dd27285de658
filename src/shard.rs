//! `--shard I/N` runs a deterministic 1/N of each task's test docs; `merge::merge` puts the
//! shard folders back together into the folder the unsharded run would have written.
//!
//! Every doc's demonstrations and scores depend only on (task, seed, doc), never on which other
//! docs are evaluated, so the union of the shards is exactly the unsharded run.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Shard `index` (1-based) of `count`: the docs at positions `p` with `p mod count = index - 1`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Shard {
    pub index: usize,
    pub count: usize,
}

impl Shard {
    /// Whether the doc at `position` (0-based, in test-split order) belongs to this shard.
    pub fn holds(&self, position: usize) -> bool {
        position % self.count == self.index - 1
    }

    /// How many of the first `n` docs belong to this shard.
    pub fn share(&self, n: usize) -> usize {
        (0..n).filter(|&p| self.holds(p)).count()
    }
}

impl Shard {
    /// The folder a `--shard auto` worker writes under `--output`: `shard-I-of-N`, so that
    /// `icl-eval merge DIR/shard-*` finds every worker's.
    pub fn folder_name(&self) -> String {
        format!("shard-{}-of-{}", self.index, self.count)
    }

    /// The shard of this worker of a cluster job, from the variables its scheduler sets
    /// (`var` reads one): a Slurm job array (`SLURM_ARRAY_TASK_ID`, its count, min and step, so
    /// stepped or offset ids map to 1…N), the tasks of one Slurm job (`SLURM_PROCID` of
    /// `SLURM_NTASKS`), or a Kubernetes Indexed Job (`JOB_COMPLETION_INDEX`, with the count from
    /// `count`, since Kubernetes sets none). An error says what was missing or does not add up.
    pub fn from_cluster(
        var: &dyn Fn(&str) -> Option<String>,
        count: Option<usize>,
    ) -> Result<Shard, String> {
        let num = |name: &str| -> Result<Option<usize>, String> {
            var(name)
                .map(|v| {
                    v.trim()
                        .parse::<usize>()
                        .map_err(|_| format!("--shard auto: {name}={v:?} is not a number"))
                })
                .transpose()
        };
        let agree = |found: usize, from: &str| match count {
            Some(n) if n != found => Err(format!(
                "--shard auto: --shards {n} but {from} says {found} workers; leave out --shards \
                 or make them agree"
            )),
            _ => Ok(found),
        };
        let shard = |index0: usize, n: usize, from: &str| {
            if n == 0 || index0 >= n {
                return Err(format!(
                    "--shard auto: {from} puts this worker at {index0} of {n} (counted from 0); \
                     the numbers do not add up"
                ));
            }
            Ok(Shard {
                index: index0 + 1,
                count: n,
            })
        };
        if let Some(id) = num("SLURM_ARRAY_TASK_ID")? {
            if num("SLURM_NTASKS")?.is_some_and(|n| n > 1) {
                return Err(
                    "--shard auto: a Slurm array whose jobs run several tasks each \
                            (SLURM_NTASKS > 1); run one task per array job"
                        .into(),
                );
            }
            let min = num("SLURM_ARRAY_TASK_MIN")?.unwrap_or(0);
            let step = num("SLURM_ARRAY_TASK_STEP")?.unwrap_or(1).max(1);
            let n = num("SLURM_ARRAY_TASK_COUNT")?.ok_or(
                "--shard auto: SLURM_ARRAY_TASK_ID is set but SLURM_ARRAY_TASK_COUNT is not",
            )?;
            if id < min || (id - min) % step != 0 {
                return Err(format!(
                    "--shard auto: SLURM_ARRAY_TASK_ID={id} is not min {min} plus a multiple of \
                     step {step}; an array of ids min, min+step, … is needed (e.g. --array=0-3)"
                ));
            }
            if let Some(max) = num("SLURM_ARRAY_TASK_MAX")?
                && (max < min || (max - min) / step + 1 != n)
            {
                return Err(format!(
                    "--shard auto: the Slurm array {min}-{max}:{step} holds {} ids but \
                     SLURM_ARRAY_TASK_COUNT={n} (an array with a `%` limit or gaps such as \
                     1,5,7 cannot be numbered 1…N); use a plain range",
                    if max < min { 0 } else { (max - min) / step + 1 }
                ));
            }
            return shard(
                (id - min) / step,
                agree(n, "the Slurm array")?,
                "the Slurm array",
            );
        }
        if let Some(id) = num("SLURM_PROCID")? {
            let n = num("SLURM_NTASKS")?
                .ok_or("--shard auto: SLURM_PROCID is set but SLURM_NTASKS is not")?;
            return shard(id, agree(n, "SLURM_NTASKS")?, "SLURM_PROCID");
        }
        if let Some(id) = num("JOB_COMPLETION_INDEX")? {
            let n = count.ok_or(
                "--shard auto: a Kubernetes Indexed Job sets no worker count; give --shards N \
                 (or ICL_EVAL_SHARDS=N), the Job's completions",
            )?;
            return shard(id, n, "JOB_COMPLETION_INDEX");
        }
        Err(
            "--shard auto: no cluster scheduler found (none of SLURM_ARRAY_TASK_ID, SLURM_PROCID, \
             JOB_COMPLETION_INDEX is set); give the shard by hand with --shard I/N"
                .into(),
        )
    }
}

/// What `--shard` says: a shard given by hand, or `auto` (from the cluster scheduler).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShardChoice {
    Fixed(Shard),
    Auto,
}

impl FromStr for ShardChoice {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        if s.trim() == "auto" {
            return Ok(ShardChoice::Auto);
        }
        s.parse()
            .map(ShardChoice::Fixed)
            .map_err(|e| format!("{e}, or auto (from Slurm or Kubernetes)"))
    }
}

impl fmt::Display for Shard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.index, self.count)
    }
}

impl FromStr for Shard {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("`{s}` is not I/N with 1 ≤ I ≤ N (e.g. 2/4)");
        let (i, n) = s.split_once('/').ok_or_else(bad)?;
        let index: usize = i.trim().parse().map_err(|_| bad())?;
        let count: usize = n.trim().parse().map_err(|_| bad())?;
        if index == 0 || index > count {
            return Err(bad());
        }
        Ok(Shard { index, count })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_partition_the_docs() {
        let shards: Vec<Shard> = (1..=3).map(|i| format!("{i}/3").parse().unwrap()).collect();
        for p in 0..10 {
            assert_eq!(shards.iter().filter(|s| s.holds(p)).count(), 1);
        }
        assert_eq!(
            shards.iter().map(|s| s.share(10)).collect::<Vec<_>>(),
            [4, 3, 3]
        );
    }

    fn env(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> + use<> {
        let vars: Vec<(String, String)> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |name| vars.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone())
    }

    #[test]
    fn cluster_workers_find_their_shard() {
        let s = |index, count| Ok(Shard { index, count });
        // `sbatch --array=0-2`: ids 0, 1, 2.
        let array = |id: &str| {
            env(&[
                ("SLURM_ARRAY_TASK_ID", id),
                ("SLURM_ARRAY_TASK_COUNT", "3"),
                ("SLURM_ARRAY_TASK_MIN", "0"),
                ("SLURM_ARRAY_TASK_MAX", "2"),
                ("SLURM_NTASKS", "1"),
                ("SLURM_PROCID", "0"),
            ])
        };
        assert_eq!(Shard::from_cluster(&array("0"), None), s(1, 3));
        assert_eq!(Shard::from_cluster(&array("2"), None), s(3, 3));
        assert_eq!(Shard::from_cluster(&array("2"), Some(3)), s(3, 3));
        let e = Shard::from_cluster(&array("2"), Some(4)).unwrap_err();
        assert!(e.contains("--shards 4") && e.contains("3 workers"), "{e}");
        // `--array=10-30:10`: ids 10, 20, 30.
        let stepped = |id: &str| {
            env(&[
                ("SLURM_ARRAY_TASK_ID", id),
                ("SLURM_ARRAY_TASK_COUNT", "3"),
                ("SLURM_ARRAY_TASK_MIN", "10"),
                ("SLURM_ARRAY_TASK_MAX", "30"),
                ("SLURM_ARRAY_TASK_STEP", "10"),
            ])
        };
        assert_eq!(Shard::from_cluster(&stepped("20"), None), s(2, 3));
        assert!(
            Shard::from_cluster(&stepped("25"), None)
                .unwrap_err()
                .contains("step 10")
        );
        // `--array=1,5,7`: three ids that no min and step number.
        let gaps = env(&[
            ("SLURM_ARRAY_TASK_ID", "5"),
            ("SLURM_ARRAY_TASK_COUNT", "3"),
            ("SLURM_ARRAY_TASK_MIN", "1"),
            ("SLURM_ARRAY_TASK_MAX", "7"),
        ]);
        let e = Shard::from_cluster(&gaps, None).unwrap_err();
        assert!(
            e.contains("holds 7 ids") && e.contains("plain range"),
            "{e}"
        );
        // `srun --ntasks=4`.
        let tasks = env(&[("SLURM_PROCID", "3"), ("SLURM_NTASKS", "4")]);
        assert_eq!(Shard::from_cluster(&tasks, None), s(4, 4));
        // A Kubernetes Indexed Job: the count from --shards.
        let k8s = env(&[("JOB_COMPLETION_INDEX", "1")]);
        assert_eq!(Shard::from_cluster(&k8s, Some(2)), s(2, 2));
        assert!(
            Shard::from_cluster(&k8s, None)
                .unwrap_err()
                .contains("--shards N")
        );
        assert!(
            Shard::from_cluster(&k8s, Some(1))
                .unwrap_err()
                .contains("do not add up")
        );
        let none = Shard::from_cluster(&env(&[]), None).unwrap_err();
        assert!(none.contains("--shard I/N"), "{none}");
        let bad = env(&[("SLURM_PROCID", "x"), ("SLURM_NTASKS", "2")]);
        assert!(
            Shard::from_cluster(&bad, None)
                .unwrap_err()
                .contains("not a number")
        );
        assert_eq!("auto".parse::<ShardChoice>(), Ok(ShardChoice::Auto));
        assert_eq!(
            "2/3".parse::<ShardChoice>(),
            Ok(ShardChoice::Fixed(Shard { index: 2, count: 3 }))
        );
        assert!("x".parse::<ShardChoice>().unwrap_err().contains("auto"));
        assert_eq!(Shard { index: 2, count: 3 }.folder_name(), "shard-2-of-3");
    }

    #[test]
    fn bad_shards_are_refused() {
        for s in ["0/3", "4/3", "3", "a/b", "1/0", "-1/2"] {
            assert!(s.parse::<Shard>().is_err(), "{s}");
        }
        assert_eq!(" 2 / 4".parse::<Shard>(), Ok(Shard { index: 2, count: 4 }));
    }
}
