//! The `goals` section: unique names, the `when` of each goal, the statuses that count as
//! reached (codes like 201, classes like 2xx) and at most [`MAX_GOALS`] goals.

use std::collections::HashSet;
use std::sync::Arc;

use super::{is_rule_name, At, Compiler};
use crate::rules::model::{Goal, StatusMatch};
use crate::rules::raw::{RawGoal, Text};

/// Goals are tracked per request in a 64-bit set.
pub const MAX_GOALS: usize = 64;

impl Compiler {
    /// The goals in order, at most [`MAX_GOALS`].
    pub(super) fn goals(&mut self, raw: Vec<(At, serde_yaml::Value)>) -> Vec<Goal> {
        let mut goals = Vec::new();
        let mut seen = HashSet::new();
        for (at, value) in raw {
            let Some(g) = self.parse::<RawGoal>(&at, &format!("goal #{}", goals.len() + 1), value)
            else {
                continue;
            };
            let RawGoal { name, when, status } = g;
            let what = format!("goal \"{name}\"");
            if !is_rule_name(&name) {
                self.error(
                    &at,
                    format!("{what}: names may only use letters, digits, '-', '_' and '.'"),
                );
            }
            if !seen.insert(name.clone()) {
                self.error(&at, format!("{what} is defined twice"));
            }
            let conditions = self.conditions(&at.child("when"), &what, when);
            let texts = status
                .map(|s| s.0)
                .unwrap_or_else(|| vec![Text("2xx".into())]);
            let status = self.status(&at, &what, texts);
            if goals.len() == MAX_GOALS {
                self.error(
                    &at,
                    format!("{what}: at most {MAX_GOALS} goals are supported"),
                );
                continue;
            }
            goals.push(Goal {
                name: Arc::from(name.as_str()),
                conditions,
                status,
            });
        }
        goals
    }

    /// The response statuses that reach a goal.
    fn status(&mut self, at: &At, what: &str, texts: Vec<Text>) -> StatusMatch {
        let mut status = StatusMatch {
            classes: 0,
            codes: Vec::new(),
        };
        for t in texts {
            let t = t.0.to_ascii_lowercase();
            match (
                t.strip_suffix("xx").map(|c| c.parse::<u8>()),
                t.parse::<u16>(),
            ) {
                (Some(Ok(class @ 1..=5)), _) => status.classes |= 1 << class,
                (None, Ok(code @ 100..=599)) => status.codes.push(code),
                _ => self.error(
                    at,
                    format!("{what}: status \"{t}\" is not a code like 201 or a class like 2xx"),
                ),
            }
        }
        status
    }
}
