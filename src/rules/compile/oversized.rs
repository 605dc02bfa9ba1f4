//! Refusing an over-long `uid_in` or `host` list before the file is parsed into values.
//!
//! A list of a million uids costs most of a second to parse into YAML values and as much
//! again to read into its raw type, only for `conditions.rs` to refuse it by its length. So
//! a file that may hold a list longer than [`MAX_LIST_ENTRIES`] (it has at least that many
//! commas and line ends: every item after a list's first needs one) is first walked as a
//! stream of YAML events, which builds nothing but the count of each list. A `uid_in` or
//! `host` list of a rule, goal or rollout found longer is refused at its line with the
//! message `conditions.rs` gives, and the file goes no further. Any other file (all but
//! those of lists near the limit) pays one count of bytes.

use yaml_rust2::parser::{Event, MarkedEventReceiver, Parser};
use yaml_rust2::scanner::Marker;

use super::MAX_LIST_ENTRIES;

/// A list found longer than [`MAX_LIST_ENTRIES`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Oversized {
    /// Its 1-based line (of its key).
    pub line: usize,
    /// The refusal, as `conditions.rs` words it.
    pub message: String,
}

/// The refusal of a `key` list of `len` entries in `what` (`rule "name"`).
pub(super) fn too_long(what: &str, key: &str, len: usize) -> String {
    let (items, advice) = if key == "uid_in" {
        ("uids", "put the uids in a Redis set (identity.tier.redis_set or identity.internal.redis_set, then tier: paid or internal: true) or store their versions (version: $assigned)")
    } else {
        ("hosts", "serve the domains with \"*.suffix\" patterns, or give each group of tenants a service of its own")
    };
    format!("{what}: {key} lists {len} {items}, more than {MAX_LIST_ENTRIES}: {advice}")
}

/// The over-long `uid_in` and `host` lists of a rules file's text, in the order written;
/// empty at once for a text with fewer separators than such a list needs.
pub(super) fn oversized_lists(text: &str) -> Vec<Oversized> {
    let separators = memchr::memchr2_iter(b',', b'\n', text.as_bytes()).count();
    if separators < MAX_LIST_ENTRIES {
        return Vec::new();
    }
    let mut walk = Walk::default();
    // A syntax error ends the walk; serde then reports it with its line.
    let _ = Parser::new_from_str(text).load(&mut walk, false);
    let found = std::mem::take(&mut walk.found);
    found
        .into_iter()
        .map(|list| Oversized {
            line: list.line,
            message: too_long(&walk.owner(&list.owner), &list.key, list.len),
        })
        .collect()
}

/// Where a node is: the key of a mapping or the index in a sequence.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    Key(String),
    Index(usize),
}

/// A mapping or sequence being read; `pushed`: whether entering it added to the path.
enum Frame {
    /// `key`: the key read, whose value comes next, with its line.
    Map {
        key: Option<(String, usize)>,
        pushed: bool,
    },
    /// `len`: the items so far; `key`: the key it is the value of, with its line.
    Seq {
        len: usize,
        key: Option<(String, usize)>,
        pushed: bool,
    },
}

/// A list found too long, with what it belongs to: `rules` or `goals` and an index, or
/// `rollouts` and a name.
struct Found {
    owner: (String, Segment),
    key: String,
    line: usize,
    len: usize,
}

#[derive(Default)]
struct Walk {
    /// The path of the mapping or sequence being read.
    path: Vec<Segment>,
    frames: Vec<Frame>,
    /// `name:` of each rule and goal, by section and index.
    names: Vec<((String, usize), String)>,
    found: Vec<Found>,
}

impl Walk {
    /// How `conditions.rs` names the owner: `rule "name"` (or `rule #n` without a name),
    /// `goal "name"`, `rollout "name"`.
    fn owner(&self, (section, at): &(String, Segment)) -> String {
        let kind = match section.as_str() {
            "rules" => "rule",
            "goals" => "goal",
            _ => "rollout",
        };
        match at {
            Segment::Key(name) => format!("{kind} \"{name}\""),
            Segment::Index(i) => {
                match self.names.iter().find(|((s, n), _)| s == section && n == i) {
                    Some((_, name)) => format!("{kind} \"{name}\""),
                    None => format!("{kind} #{}", i + 1),
                }
            }
        }
    }

    /// The section and item `path` lies in, if in a rule, goal or rollout.
    fn owner_of(path: &[Segment]) -> Option<(String, Segment)> {
        match path {
            [Segment::Key(section), at, ..]
                if matches!(section.as_str(), "rules" | "goals" | "rollouts") =>
            {
                Some((section.clone(), at.clone()))
            }
            _ => None,
        }
    }

    /// Starts a mapping or sequence: the segment it adds to the path, and the key it is the
    /// value of.
    fn open(&mut self) -> (bool, Option<(String, usize)>) {
        let segment = match self.frames.last_mut() {
            Some(Frame::Map { key, .. }) => match key.take() {
                Some((k, line)) => {
                    let segment = Segment::Key(k.clone());
                    self.path.push(segment);
                    return (true, Some((k, line)));
                }
                None => None,
            },
            Some(Frame::Seq { len, .. }) => {
                *len += 1;
                Some(Segment::Index(*len - 1))
            }
            None => None,
        };
        match segment {
            Some(segment) => {
                self.path.push(segment);
                (true, None)
            }
            None => (false, None),
        }
    }
}

impl MarkedEventReceiver for Walk {
    fn on_event(&mut self, event: Event, mark: Marker) {
        match event {
            Event::Scalar(text, ..) => match self.frames.last_mut() {
                Some(Frame::Map { key, .. }) => match key.take() {
                    None => *key = Some((text, mark.line())),
                    Some((k, _)) => {
                        // `name: x` of `rules.N` or `goals.N`.
                        if let (true, [Segment::Key(section), Segment::Index(i)]) =
                            (k == "name", &self.path[..])
                        {
                            self.names.push(((section.clone(), *i), text));
                        }
                    }
                },
                // An item of a list: counted, nothing built.
                Some(Frame::Seq { len, .. }) => *len += 1,
                None => {}
            },
            Event::Alias(_) => match self.frames.last_mut() {
                Some(Frame::Map { key, .. }) => *key = None,
                Some(Frame::Seq { len, .. }) => *len += 1,
                None => {}
            },
            Event::MappingStart(..) => {
                let (pushed, _) = self.open();
                self.frames.push(Frame::Map { key: None, pushed });
            }
            Event::SequenceStart(..) => {
                let (pushed, key) = self.open();
                self.frames.push(Frame::Seq {
                    len: 0,
                    key,
                    pushed,
                });
            }
            Event::MappingEnd | Event::SequenceEnd => {
                let pushed = match self.frames.pop() {
                    Some(Frame::Map { pushed, .. }) => pushed,
                    Some(Frame::Seq { len, key, pushed }) => {
                        if pushed {
                            self.path.pop();
                        }
                        if let Some((key, line)) = key {
                            let owner = Self::owner_of(&self.path);
                            if let (true, Some(owner)) = (
                                len > MAX_LIST_ENTRIES && matches!(key.as_str(), "uid_in" | "host"),
                                owner,
                            ) {
                                self.found.push(Found {
                                    owner,
                                    key,
                                    line,
                                    len,
                                });
                            }
                        }
                        return;
                    }
                    None => false,
                };
                if pushed {
                    self.path.pop();
                }
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn few_separators_skip_the_walk() {
        assert!(oversized_lists("rules:\n  - { name: a, when: { uid_in: [1, 2] } }\n").is_empty());
    }

    /// The owner's name and the key's line, whatever the name's place in the rule; a list
    /// elsewhere (a service's hosts, a tier's uids) is not this module's to refuse.
    #[test]
    fn finds_the_lists_of_rules_goals_and_rollouts() {
        let n = MAX_LIST_ENTRIES + 1;
        let list = (0..n).map(|i| i.to_string()).collect::<Vec<_>>().join(", ");
        let text = format!(
            "identity: {{ tier: {{ paid_uids: [{list}] }} }}\nrules:\n  - name: short\n    when: {{ uid_in: [1] }}\n  - when:\n      not: {{ uid_in: [{list}] }}\n    name: late\n  - when: {{ host: [{list}] }}\ngoals:\n  - {{ name: g, when: {{ uid_in: [{list}] }} }}\nrollouts:\n  ramp: {{ when: {{ host: [{list}] }} }}\n"
        );
        let found: Vec<(usize, String)> = oversized_lists(&text)
            .into_iter()
            .map(|o| (o.line, o.message))
            .collect();
        assert_eq!(
            found,
            vec![
                (6, too_long("rule \"late\"", "uid_in", n)),
                (8, too_long("rule #3", "host", n)),
                (10, too_long("goal \"g\"", "uid_in", n)),
                (12, too_long("rollout \"ramp\"", "host", n)),
            ]
        );
    }
}
