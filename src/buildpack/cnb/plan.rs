//! The build plan: what each buildpack's detect says it provides and requires, resolved
//! as the lifecycle resolves it.
//!
//! A passing buildpack offers alternatives: its top-level `provides`/`requires`, then each
//! `[[or]]` in file order. Every combination of alternatives is tried, the first
//! buildpack's choice varying slowest, until one is valid:
//! * a require must be met by a provide of the same buildpack or an earlier one;
//! * a provide must be required by the same buildpack or a later one.
//!
//! An optional buildpack that breaks a rule is dropped from the combination and the rules
//! are checked again; a required (non-optional) one makes the combination fail. The first
//! valid combination wins. Each requirement's entry lists who provides it and every
//! require of it (with metadata); a buildpack's plan (`CNB_BP_PLAN_PATH`) holds the
//! requires of every entry it provides.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Most combinations of alternatives tried for one group.
const MAX_TRIALS: usize = 4096;

#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
pub struct Provide {
    pub name: String,
}

#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
pub struct Require {
    pub name: String,
    #[serde(default, skip_serializing_if = "toml::Table::is_empty")]
    pub metadata: toml::Table,
}

#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
pub struct Sections {
    #[serde(default)]
    pub provides: Vec<Provide>,
    #[serde(default)]
    pub requires: Vec<Require>,
}

/// The plan file a detect wrote (`CNB_BUILD_PLAN_PATH`).
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
pub struct DetectPlan {
    #[serde(flatten)]
    pub top: Sections,
    #[serde(default)]
    pub or: Vec<Sections>,
}

impl DetectPlan {
    fn alternatives(&self) -> Vec<&Sections> {
        std::iter::once(&self.top).chain(&self.or).collect()
    }
}

/// A buildpack whose detect passed.
#[derive(Clone, Debug, PartialEq)]
pub struct Passed {
    pub id: String,
    pub optional: bool,
    pub plan: DetectPlan,
}

/// One requirement of the resolved plan.
#[derive(Clone, Debug, PartialEq)]
pub struct Entry {
    pub name: String,
    /// Ids of the buildpacks that provide it, in group order.
    pub providers: Vec<String>,
    pub requires: Vec<Require>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Resolved {
    /// Indices into the `passed` slice given to [`resolve`]: the buildpacks that run.
    pub members: Vec<usize>,
    pub entries: Vec<Entry>,
}

/// Why a combination failed, for the user.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Unmet {
    Requires { buildpack: String, name: String },
    UnusedProvide { buildpack: String, name: String },
    Empty,
}

impl fmt::Display for Unmet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Unmet::Requires { buildpack, name } => {
                write!(f, "{buildpack} requires {name:?}, which neither it nor an earlier buildpack provides")
            }
            Unmet::UnusedProvide { buildpack, name } => {
                write!(f, "{buildpack} provides {name:?}, which neither it nor a later buildpack requires")
            }
            Unmet::Empty => write!(f, "no buildpack is left once the optional ones that broke the plan are dropped"),
        }
    }
}

/// Finds the first valid combination; else the reasons each combination failed, in the
/// order tried (duplicates removed).
pub fn resolve(passed: &[Passed]) -> Result<Resolved, Vec<Unmet>> {
    let options: Vec<Vec<&Sections>> = passed.iter().map(|p| p.plan.alternatives()).collect();
    let mut reasons = Vec::new();
    let mut choice = vec![0usize; passed.len()];
    for _ in 0..MAX_TRIALS {
        match trial(passed, &options, &choice) {
            Ok(r) => return Ok(r),
            Err(u) => {
                if !reasons.contains(&u) {
                    reasons.push(u);
                }
            }
        }
        // Next combination: the last buildpack varies fastest.
        let mut i = passed.len();
        loop {
            if i == 0 {
                return Err(reasons);
            }
            i -= 1;
            choice[i] += 1;
            if choice[i] < options[i].len() {
                break;
            }
            choice[i] = 0;
        }
    }
    Err(reasons)
}

fn trial(passed: &[Passed], options: &[Vec<&Sections>], choice: &[usize]) -> Result<Resolved, Unmet> {
    let mut members: Vec<usize> = (0..passed.len()).collect();
    while !members.is_empty() {
        match check(passed, options, choice, &members) {
            Ok(entries) => return Ok(Resolved { members, entries }),
            Err((who, unmet)) if !passed[who].optional => return Err(unmet),
            Err((who, _)) => members.retain(|&m| m != who),
        }
    }
    Err(Unmet::Empty)
}

/// Checks the rules for `members`; the first offender (requires first, then provides).
fn check(
    passed: &[Passed],
    options: &[Vec<&Sections>],
    choice: &[usize],
    members: &[usize],
) -> Result<Vec<Entry>, (usize, Unmet)> {
    #[derive(Default)]
    struct Dep {
        providers: Vec<usize>,
        /// Provides not yet required by anyone (same or later).
        pending: Vec<usize>,
        requires: Vec<Require>,
    }
    let mut deps: Vec<(String, Dep)> = Vec::new();
    fn dep<'a>(deps: &'a mut Vec<(String, Dep)>, name: &str) -> &'a mut Dep {
        let i = match deps.iter().position(|(n, _)| n == name) {
            Some(i) => i,
            None => {
                deps.push((name.to_string(), Dep::default()));
                deps.len() - 1
            }
        };
        &mut deps[i].1
    }
    let mut early: Vec<(usize, String)> = Vec::new();
    for &m in members {
        let s = options[m][choice[m]];
        for p in &s.provides {
            dep(&mut deps, &p.name).pending.push(m);
        }
        for r in &s.requires {
            let d = dep(&mut deps, &r.name);
            let pending = std::mem::take(&mut d.pending);
            d.providers.extend(pending);
            if d.providers.is_empty() {
                early.push((m, r.name.clone()));
            } else {
                d.requires.push(r.clone());
            }
        }
    }
    if let Some((m, name)) = early.into_iter().next() {
        return Err((m, Unmet::Requires { buildpack: passed[m].id.clone(), name }));
    }
    for (name, d) in &deps {
        if let Some(&m) = d.pending.first() {
            return Err((m, Unmet::UnusedProvide { buildpack: passed[m].id.clone(), name: name.clone() }));
        }
    }
    Ok(deps
        .into_iter()
        .filter(|(_, d)| !d.providers.is_empty())
        .map(|(name, d)| Entry {
            name,
            providers: d.providers.iter().map(|&m| passed[m].id.clone()).collect(),
            requires: d.requires,
        })
        .collect())
}

/// The plan file of one buildpack (`CNB_BP_PLAN_PATH`): `[[entries]]` with name and metadata.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct BuildpackPlan {
    pub entries: Vec<Require>,
}

/// The requires of every entry `id` provides, entry by entry.
pub fn buildpack_plan(entries: &[Entry], id: &str) -> BuildpackPlan {
    BuildpackPlan {
        entries: entries
            .iter()
            .filter(|e| e.providers.iter().any(|p| p == id))
            .flat_map(|e| e.requires.clone())
            .collect(),
    }
}

/// After a buildpack built: the entries it met leave the plan (those its `build.toml`
/// lists as `[[unmet]]` stay for a later provider).
pub fn remove_met(entries: &mut Vec<Entry>, id: &str, unmet: &[String]) {
    entries.retain(|e| !e.providers.iter().any(|p| p == id) || unmet.contains(&e.name));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn passed(id: &str, optional: bool, toml_text: &str) -> Passed {
        Passed { id: id.into(), optional, plan: toml::from_str(toml_text).unwrap() }
    }

    fn ids(passed: &[Passed], r: &Resolved) -> Vec<String> {
        r.members.iter().map(|&m| passed[m].id.clone()).collect()
    }

    #[test]
    fn a_require_is_met_by_an_earlier_or_the_same_buildpack() {
        let g = [
            passed("node", false, "[[provides]]\nname = \"node\"\n"),
            passed("app", false, "[[requires]]\nname = \"node\"\n[requires.metadata]\nversion = \"20\"\n"),
        ];
        let r = resolve(&g).unwrap();
        assert_eq!(ids(&g, &r), ["node", "app"]);
        assert_eq!(r.entries.len(), 1);
        assert_eq!(r.entries[0].providers, ["node"]);
        let plan = buildpack_plan(&r.entries, "node");
        assert_eq!(plan.entries[0].metadata["version"].as_str(), Some("20"));
        assert!(buildpack_plan(&r.entries, "app").entries.is_empty());
        // The same buildpack both provides and requires.
        let own = [passed("py", false, "[[provides]]\nname = \"py\"\n[[requires]]\nname = \"py\"\n")];
        assert!(resolve(&own).is_ok());
    }

    #[test]
    fn a_later_provide_does_not_meet_an_earlier_require() {
        let g = [
            passed("app", false, "[[requires]]\nname = \"node\"\n"),
            passed("node", false, "[[provides]]\nname = \"node\"\n"),
        ];
        let reasons = resolve(&g).unwrap_err();
        assert_eq!(reasons[0], Unmet::Requires { buildpack: "app".into(), name: "node".into() });
        assert_eq!(reasons[0].to_string(), "app requires \"node\", which neither it nor an earlier buildpack provides");
    }

    #[test]
    fn an_unused_provide_fails_unless_optional() {
        let g = [passed("node", false, "[[provides]]\nname = \"node\"\n"), passed("app", false, "")];
        let reasons = resolve(&g).unwrap_err();
        assert_eq!(reasons, [Unmet::UnusedProvide { buildpack: "node".into(), name: "node".into() }]);
        let g = [passed("node", true, "[[provides]]\nname = \"node\"\n"), passed("app", false, "")];
        let r = resolve(&g).unwrap();
        assert_eq!(ids(&g, &r), ["app"]);
    }

    #[test]
    fn or_alternatives_are_tried_in_order_first_buildpack_slowest() {
        let g = [
            passed(
                "node",
                false,
                "[[provides]]\nname = \"node\"\n[[or]]\n[[or.provides]]\nname = \"yarn\"\n[[or.provides]]\nname = \"node\"\n",
            ),
            passed("app", false, "[[requires]]\nname = \"yarn\"\n[[or]]\n[[or.requires]]\nname = \"node\"\n"),
        ];
        // (top, top): yarn unmet. (top, or): node met -> wins.
        let r = resolve(&g).unwrap();
        assert_eq!(r.entries.iter().map(|e| e.name.as_str()).collect::<Vec<_>>(), ["node"]);
        let g = [
            passed("node", false, "[[provides]]\nname = \"node\"\n[[or]]\n[[or.provides]]\nname = \"yarn\"\n"),
            passed("app", false, "[[requires]]\nname = \"yarn\"\n"),
        ];
        let r = resolve(&g).unwrap();
        assert_eq!(r.entries[0].name, "yarn");
    }

    #[test]
    fn optional_buildpack_that_breaks_the_plan_is_dropped_and_others_rechecked() {
        let g = [
            passed("a", true, "[[provides]]\nname = \"x\"\n"),
            passed("b", true, "[[requires]]\nname = \"y\"\n[[provides]]\nname = \"x2\"\n"),
            passed("c", false, "[[requires]]\nname = \"x\"\n"),
        ];
        let r = resolve(&g).unwrap();
        assert_eq!(ids(&g, &r), ["a", "c"]);
        // Dropping an optional provider can leave a required buildpack unmet.
        let g = [
            passed("a", true, "[[requires]]\nname = \"z\"\n[[provides]]\nname = \"x\"\n"),
            passed("c", false, "[[requires]]\nname = \"x\"\n"),
        ];
        let reasons = resolve(&g).unwrap_err();
        assert_eq!(reasons, [Unmet::Requires { buildpack: "c".into(), name: "x".into() }]);
    }

    #[test]
    fn several_providers_and_requires_share_an_entry_and_met_entries_leave() {
        let g = [
            passed("a", false, "[[provides]]\nname = \"x\"\n"),
            passed("b", false, "[[provides]]\nname = \"x\"\n[[requires]]\nname = \"x\"\n[requires.metadata]\nn = 1\n"),
            passed("c", false, "[[requires]]\nname = \"x\"\n[requires.metadata]\nn = 2\n"),
        ];
        let mut r = resolve(&g).unwrap();
        assert_eq!(r.entries[0].providers, ["a", "b"]);
        assert_eq!(buildpack_plan(&r.entries, "a").entries.len(), 2);
        remove_met(&mut r.entries, "a", &["x".into()]);
        assert_eq!(buildpack_plan(&r.entries, "b").entries.len(), 2, "unmet by a: stays for b");
        remove_met(&mut r.entries, "a", &[]);
        assert!(buildpack_plan(&r.entries, "b").entries.is_empty());
    }

    #[test]
    fn bp_plan_serialises_as_the_spec_says() {
        let plan = BuildpackPlan {
            entries: vec![Require { name: "node".into(), metadata: toml::from_str("v = \"20\"").unwrap() }],
        };
        let text = toml::to_string(&plan).unwrap();
        assert!(
            text.contains("[[entries]]") && text.contains("name = \"node\"") && text.contains("[entries.metadata]"),
            "{text}"
        );
    }
}
