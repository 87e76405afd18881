//! Placement constraints with Marathon's operators, written `[field, OPERATOR, value?]`.
//!
//! `field` is `@hostname` (the offer's host name) or the name of an agent attribute (`rack`).
//!
//! | operator | value | a task may go to an agent whose field value `v` … |
//! | --- | --- | --- |
//! | `UNIQUE` | none | runs no task of the app yet (`@hostname UNIQUE`: one task per host) |
//! | `CLUSTER` | optional | equals the value; without one, equals the value of the tasks already placed |
//! | `GROUP_BY` | optional count `n` | has no more tasks than the least-used value (with `n`: assume `n` values exist, so unseen values come first) |
//! | `LIKE` | regex | fully matches the regex |
//! | `UNLIKE` | regex | does not fully match the regex |
//! | `MAX_PER` | count `n` | runs fewer than `n` tasks of the app |
//!
//! An agent without the attribute never matches `LIKE` or `CLUSTER`, always passes `UNLIKE`, and
//! for `UNIQUE`, `GROUP_BY` and `MAX_PER` counts as one more value, the empty string.
//!
//! Counts cover the app's (or job's) tasks that have not ended, including those placed earlier in
//! the same offer round.

use std::collections::HashMap;

use regex::Regex;
use shoal_sdk::Attribute;

/// The field that means "the agent's host name".
pub const HOSTNAME: &str = "@hostname";

/// Most constraints one app may have.
pub const MAX_CONSTRAINTS: usize = 32;

/// An operator and its parsed value.
#[derive(Clone, Debug)]
pub enum Operator {
    /// One task per value.
    Unique,
    /// All tasks on one value (given, or the first task's).
    Cluster(Option<String>),
    /// Spread evenly over the values (assuming at least `n`).
    GroupBy(Option<u32>),
    /// The value fully matches.
    Like(Regex),
    /// The value does not fully match.
    Unlike(Regex),
    /// At most `n` tasks per value.
    MaxPer(u32),
}

/// One constraint.
#[derive(Clone, Debug)]
pub struct Constraint {
    /// `@hostname` or an attribute name.
    pub field: String,
    /// Operator and value.
    pub op: Operator,
}

const OPERATORS: &str = "UNIQUE, CLUSTER, GROUP_BY, LIKE, UNLIKE, MAX_PER";

fn full_match(pattern: &str) -> Result<Regex, String> {
    // The pattern must be a regex on its own: wrapped unchecked, `x)|(.*` would close the
    // group and match every value.
    let invalid = |e: regex::Error| format!("invalid regex {pattern:?}: {e}");
    Regex::new(pattern).map_err(invalid)?;
    Regex::new(&format!("^(?:{pattern})$")).map_err(invalid)
}

impl Constraint {
    /// Parses `[field, OPERATOR, value?]`; errors start with `constraints[index]`.
    pub fn parse(raw: &[String], index: usize) -> Result<Self, String> {
        let at = format!("constraints[{index}]");
        if !(2..=3).contains(&raw.len()) {
            return Err(format!(
                "{at}: expected [field, operator] or [field, operator, value], got {} items",
                raw.len()
            ));
        }
        let field = raw[0].clone();
        if field.is_empty() || field.len() > 128 || field.chars().any(|c| c.is_control()) {
            return Err(format!("{at}: field must be @hostname or an attribute name (1..=128 characters)"));
        }
        let value = raw.get(2).map(String::as_str);
        let count = |what: &str| -> Result<u32, String> {
            match value {
                None => Err(format!("{at}: {what} needs a value")),
                Some(v) => match v.parse::<u32>() {
                    Ok(n) if n >= 1 => Ok(n),
                    _ => Err(format!("{at}: {what} value must be a positive integer, got {v:?}")),
                },
            }
        };
        let no_value = |what: &str| match value {
            Some(v) => Err(format!("{at}: {what} takes no value, got {v:?}")),
            None => Ok(()),
        };
        let op = match raw[1].as_str() {
            "UNIQUE" => {
                no_value("UNIQUE")?;
                Operator::Unique
            }
            "CLUSTER" => match value {
                Some("") => return Err(format!("{at}: CLUSTER value must not be empty")),
                v => Operator::Cluster(v.map(str::to_string)),
            },
            "GROUP_BY" => Operator::GroupBy(if value.is_some() { Some(count("GROUP_BY")?) } else { None }),
            "LIKE" | "UNLIKE" => {
                let Some(pattern) = value else { return Err(format!("{at}: {} needs a regex value", raw[1])) };
                let re = full_match(pattern).map_err(|e| format!("{at}: {e}"))?;
                if raw[1] == "LIKE" { Operator::Like(re) } else { Operator::Unlike(re) }
            }
            "MAX_PER" => Operator::MaxPer(count("MAX_PER")?),
            other => return Err(format!("{at}: unknown constraint operator {other} (one of {OPERATORS})")),
        };
        Ok(Constraint { field, op })
    }

    /// Parses a list of constraints.
    pub fn parse_all(raw: &[Vec<String>]) -> Result<Vec<Constraint>, String> {
        if raw.len() > MAX_CONSTRAINTS {
            return Err(format!("constraints: at most {MAX_CONSTRAINTS} constraints"));
        }
        raw.iter().enumerate().map(|(i, c)| Constraint::parse(c, i)).collect()
    }

    /// `@hostname UNIQUE`, `rack GROUP_BY 2`, for messages.
    pub fn describe(&self) -> String {
        let (op, value) = match &self.op {
            Operator::Unique => ("UNIQUE", None),
            Operator::Cluster(v) => ("CLUSTER", v.clone()),
            Operator::GroupBy(n) => ("GROUP_BY", n.map(|n| n.to_string())),
            Operator::Like(re) => ("LIKE", Some(pattern_of(re))),
            Operator::Unlike(re) => ("UNLIKE", Some(pattern_of(re))),
            Operator::MaxPer(n) => ("MAX_PER", Some(n.to_string())),
        };
        match value {
            Some(v) => format!("{} {op} {v}", self.field),
            None => format!("{} {op}", self.field),
        }
    }

    /// The agent's value of this constraint's field.
    pub fn value_of<'a>(&self, hostname: &'a str, attributes: &'a [Attribute]) -> Option<&'a str> {
        if self.field == HOSTNAME {
            Some(hostname)
        } else {
            attributes.iter().find(|a| a.name == self.field).map(|a| a.value.as_str())
        }
    }

    /// The value of this constraint's field for a task stored with `(name, value)` attribute
    /// pairs.
    pub fn value_in<'a>(&self, hostname: &'a str, attributes: &'a [(String, String)]) -> Option<&'a str> {
        if self.field == HOSTNAME {
            Some(hostname)
        } else {
            attributes.iter().find(|(n, _)| *n == self.field).map(|(_, v)| v.as_str())
        }
    }

    /// Whether one more task may go to an agent whose field value is `value`, given how many of
    /// the app's tasks each value holds.
    pub fn allows(&self, value: Option<&str>, counts: &Counts) -> bool {
        let key = value.unwrap_or("");
        match &self.op {
            Operator::Unique => counts.get(key) == 0,
            Operator::MaxPer(n) => counts.get(key) < *n,
            Operator::Like(re) => value.is_some_and(|v| re.is_match(v)),
            Operator::Unlike(re) => !value.is_some_and(|v| re.is_match(v)),
            Operator::Cluster(Some(want)) => value == Some(want.as_str()),
            Operator::Cluster(None) => value.is_some_and(|v| counts.is_empty() || counts.get(v) > 0),
            Operator::GroupBy(n) => {
                let c = counts.get(key);
                if c == 0 {
                    return true;
                }
                // Every value seen holds a task; with fewer than `n` seen, unseen values (0 tasks)
                // are the least used, so a seen value must wait.
                if (counts.distinct() as u32) < n.unwrap_or(0) {
                    return false;
                }
                c <= counts.min()
            }
        }
    }

    /// Whether the counts matter for this constraint (they do not for LIKE/UNLIKE/CLUSTER value).
    pub fn counts_matter(&self) -> bool {
        !matches!(self.op, Operator::Like(_) | Operator::Unlike(_) | Operator::Cluster(Some(_)))
    }

    /// Whether placing a task can make *another* agent acceptable that was not (GROUP_BY: the
    /// least-used count rises), so a placement loop must re-examine agents it skipped.
    pub fn is_non_monotonic(&self) -> bool {
        matches!(self.op, Operator::GroupBy(_))
    }
}

fn pattern_of(re: &Regex) -> String {
    let s = re.as_str();
    s.strip_prefix("^(?:").and_then(|s| s.strip_suffix(")$")).unwrap_or(s).to_string()
}

/// Number of tasks per field value (the empty string stands for "attribute absent").
#[derive(Clone, Debug, Default)]
pub struct Counts {
    map: HashMap<String, u32>,
}

impl Counts {
    /// Tasks on `value`.
    pub fn get(&self, value: &str) -> u32 {
        self.map.get(value).copied().unwrap_or(0)
    }
    /// One more task on `value`.
    pub fn add(&mut self, value: &str) {
        *self.map.entry(value.to_string()).or_insert(0) += 1;
    }
    /// Whether no task is counted.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
    /// Number of values holding tasks.
    pub fn distinct(&self) -> usize {
        self.map.len()
    }
    /// Fewest tasks on any value holding tasks (0 when none).
    pub fn min(&self) -> u32 {
        self.map.values().copied().min().unwrap_or(0)
    }
}

/// The counts of every constraint of one app.
#[derive(Clone, Debug, Default)]
pub struct ConstraintCounts {
    /// One per constraint, in order.
    pub per: Vec<Counts>,
}

impl ConstraintCounts {
    /// Empty counts for `constraints`.
    pub fn new(constraints: &[Constraint]) -> Self {
        ConstraintCounts { per: vec![Counts::default(); constraints.len()] }
    }

    /// Counts a task on an agent with this host name and attributes.
    pub fn add(&mut self, constraints: &[Constraint], hostname: &str, attributes: &[Attribute]) {
        for (c, counts) in constraints.iter().zip(self.per.iter_mut()) {
            counts.add(c.value_of(hostname, attributes).unwrap_or(""));
        }
    }

    /// Counts a task stored with `(name, value)` attribute pairs.
    pub fn add_pairs(&mut self, constraints: &[Constraint], hostname: &str, attributes: &[(String, String)]) {
        for (c, counts) in constraints.iter().zip(self.per.iter_mut()) {
            counts.add(c.value_in(hostname, attributes).unwrap_or(""));
        }
    }

    /// The first constraint that refuses an agent with this host name and attributes.
    pub fn blocking<'a>(
        &self,
        constraints: &'a [Constraint],
        hostname: &str,
        attributes: &[Attribute],
    ) -> Option<&'a Constraint> {
        constraints
            .iter()
            .zip(self.per.iter())
            .find(|(c, counts)| !c.allows(c.value_of(hostname, attributes), counts))
            .map(|(c, _)| c)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn c(parts: &[&str]) -> Constraint {
        Constraint::parse(&parts.iter().map(|s| s.to_string()).collect::<Vec<_>>(), 0).unwrap()
    }
    fn err(parts: &[&str]) -> String {
        Constraint::parse(&parts.iter().map(|s| s.to_string()).collect::<Vec<_>>(), 1).unwrap_err()
    }
    fn attrs(rack: &str) -> Vec<Attribute> {
        vec![Attribute { name: "rack".into(), value: rack.into() }]
    }

    #[test]
    fn parse_errors_name_the_problem() {
        assert_eq!(
            err(&["rack", "FOO"]),
            "constraints[1]: unknown constraint operator FOO (one of UNIQUE, CLUSTER, GROUP_BY, LIKE, UNLIKE, MAX_PER)"
        );
        assert!(err(&["rack", "LIKE", "r[1"]).starts_with("constraints[1]: invalid regex \"r[1\""));
        assert_eq!(err(&["rack", "LIKE"]), "constraints[1]: LIKE needs a regex value");
        assert_eq!(err(&["rack", "MAX_PER"]), "constraints[1]: MAX_PER needs a value");
        assert!(err(&["rack", "MAX_PER", "0"]).contains("positive integer"));
        assert!(err(&["rack", "GROUP_BY", "x"]).contains("positive integer"));
        assert!(err(&["@hostname", "UNIQUE", "x"]).contains("takes no value"));
        assert!(err(&["rack"]).contains("expected [field, operator]"));
        assert!(err(&["", "UNIQUE"]).contains("field must be"));
        assert_eq!(c(&["rack", "LIKE", "r[12]"]).describe(), "rack LIKE r[12]");
        assert_eq!(c(&["rack", "GROUP_BY", "2"]).describe(), "rack GROUP_BY 2");
    }

    #[test]
    fn unique_and_max_per() {
        let u = c(&["@hostname", "UNIQUE"]);
        let mut counts = Counts::default();
        assert!(u.allows(Some("a"), &counts));
        counts.add("a");
        assert!(!u.allows(Some("a"), &counts));
        assert!(u.allows(Some("b"), &counts));
        let m = c(&["rack", "MAX_PER", "2"]);
        assert!(m.allows(Some("a"), &counts));
        counts.add("a");
        assert!(!m.allows(Some("a"), &counts));
        // A missing attribute is its own (empty) value.
        assert!(m.allows(None, &counts));
        counts.add("");
        counts.add("");
        assert!(!m.allows(None, &counts));
    }

    #[test]
    fn like_unlike_full_match() {
        let like = c(&["rack", "LIKE", "r[12]"]);
        let counts = Counts::default();
        assert!(like.allows(Some("r1"), &counts));
        assert!(!like.allows(Some("r12"), &counts), "full match only");
        assert!(!like.allows(None, &counts), "absent attribute never matches LIKE");
        let unlike = c(&["rack", "UNLIKE", "r3"]);
        assert!(unlike.allows(Some("r1"), &counts));
        assert!(!unlike.allows(Some("r3"), &counts));
        assert!(unlike.allows(None, &counts));
    }

    #[test]
    fn cluster_with_and_without_value() {
        let fixed = c(&["rack", "CLUSTER", "r1"]);
        let mut counts = Counts::default();
        assert!(fixed.allows(Some("r1"), &counts));
        assert!(!fixed.allows(Some("r2"), &counts));
        assert!(!fixed.allows(None, &counts));
        let first = c(&["rack", "CLUSTER"]);
        assert!(first.allows(Some("r2"), &counts));
        counts.add("r2");
        assert!(first.allows(Some("r2"), &counts));
        assert!(!first.allows(Some("r1"), &counts));
    }

    #[test]
    fn group_by_spreads_evenly() {
        let g = c(&["rack", "GROUP_BY"]);
        let mut counts = Counts::default();
        assert!(g.allows(Some("r1"), &counts));
        counts.add("r1");
        assert!(g.allows(Some("r2"), &counts), "an unseen value is least used");
        // Only r1 seen: it is the least used of the seen values.
        assert!(g.allows(Some("r1"), &counts));
        counts.add("r2");
        counts.add("r1");
        assert!(!g.allows(Some("r1"), &counts));
        assert!(g.allows(Some("r2"), &counts));
        // With n = 2, a seen value waits until two values hold tasks.
        let g2 = c(&["rack", "GROUP_BY", "2"]);
        let mut counts = Counts::default();
        counts.add("r1");
        assert!(!g2.allows(Some("r1"), &counts));
        assert!(g2.allows(Some("r2"), &counts));
        counts.add("r2");
        assert!(g2.allows(Some("r1"), &counts));
    }

    #[test]
    fn blocking_names_the_first_refusal() {
        let cs = vec![c(&["rack", "LIKE", "r[12]"]), c(&["@hostname", "UNIQUE"])];
        let mut counts = ConstraintCounts::new(&cs);
        assert!(counts.blocking(&cs, "h1", &attrs("r1")).is_none());
        counts.add(&cs, "h1", &attrs("r1"));
        assert_eq!(counts.blocking(&cs, "h1", &attrs("r1")).unwrap().describe(), "@hostname UNIQUE");
        assert_eq!(counts.blocking(&cs, "h2", &attrs("r3")).unwrap().describe(), "rack LIKE r[12]");
        assert!(counts.blocking(&cs, "h2", &attrs("r2")).is_none());
    }
}

/// Property tests of constraint parsing: apps' JSON carries these from outside.
#[cfg(test)]
mod props {
    use proptest::prelude::*;

    use super::*;

    fn operator() -> impl Strategy<Value = String> {
        prop_oneof![
            4 => prop::sample::select(vec!["UNIQUE", "CLUSTER", "GROUP_BY", "LIKE", "UNLIKE", "MAX_PER"]).prop_map(String::from),
            1 => any::<String>(),
        ]
    }

    /// A value: counts (well and badly written), regexes (balanced or not), anything.
    fn value() -> impl Strategy<Value = String> {
        prop_oneof!["[+0-9-]{0,12}", "[a-z()|.*?+\\[\\]^$\\\\{}0-9,]{0,10}", any::<String>(),]
    }

    fn raw() -> impl Strategy<Value = Vec<String>> {
        let field = prop_oneof![Just(HOSTNAME.to_owned()), "[a-z ]{0,6}", any::<String>()];
        (field, operator(), prop::option::of(value()), 0usize..8).prop_map(|(field, op, value, extra)| {
            let mut raw = vec![field, op];
            raw.extend(value);
            // Sometimes too few or too many items.
            match extra {
                0 => raw.truncate(1),
                1 => raw.push("x".into()),
                _ => {}
            }
            raw
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(1024))]

        /// Any list of strings parses or is refused with a message naming its place, without
        /// panicking; what parses describes itself as `field OPERATOR value`, and that value
        /// parses to the same constraint again.
        #[test]
        fn any_constraint_parses_or_is_refused_and_valid_ones_round_trip(raw in raw(), index in 0usize..40) {
            let constraint = match Constraint::parse(&raw, index) {
                Err(message) => {
                    prop_assert!(message.starts_with(&format!("constraints[{index}]: ")), "{}", message);
                    return Ok(());
                }
                Ok(constraint) => constraint,
            };
            prop_assert_eq!(&constraint.field, &raw[0]);
            let described = constraint.describe();
            let prefix = format!("{} {}", raw[0], raw[1]);
            prop_assert!(described.starts_with(&prefix), "{} for {:?}", described, raw);
            let value = described[prefix.len()..].strip_prefix(' ').map(str::to_owned);
            prop_assert_eq!(value.is_some(), raw.len() == 3 || raw[1] == "MAX_PER");
            let mut again = vec![raw[0].clone(), raw[1].clone()];
            again.extend(value);
            let reparsed = Constraint::parse(&again, index).map(|c| c.describe());
            prop_assert_eq!(reparsed, Ok(described));
        }

        /// A LIKE or UNLIKE pattern is a regex on its own: the full-match wrapper around it
        /// must not turn an unbalanced pattern into a valid one with another meaning.
        #[test]
        fn like_patterns_are_regexes_on_their_own(pattern in "[a-z()|.*?]{0,8}", like in any::<bool>()) {
            let op = if like { "LIKE" } else { "UNLIKE" };
            let raw = vec!["rack".to_owned(), op.to_owned(), pattern.clone()];
            prop_assert_eq!(Constraint::parse(&raw, 0).is_ok(), Regex::new(&pattern).is_ok(), "{}", pattern);
        }
    }

    #[test]
    fn a_pattern_cannot_close_the_full_match_group() {
        let raw = ["rack", "LIKE", "x)|(.*"].map(String::from);
        assert!(Constraint::parse(&raw, 0).is_err(), "`x)|(.*` would have matched every value");
    }
}
