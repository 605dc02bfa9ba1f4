//! The rule sets of a multi-tenant product (issue 18), shared by `benches/scale.rs` and
//! `benches/reload.rs`; `bench/scale.sh` writes the same shape with its own copy in Python
//! (`bench/tenants.py`), kept in step with this one.
//!
//! Tenant `t` owns the host `t{t}.example.com` (and `*.t{t}.example.net`), sends
//! `X-Tenant: t{t}` from the shared app host, and has uids `{t}00000..{t}00009`. Rule `r`
//! belongs to tenant `r / 5` and is, by `r % 5`:
//!
//! 0. a host rule with a uid tail: `{ host: t{t}.example.com, uid_tail: [1, 2] }`;
//! 1. a header rule on the API: `{ header: { X-Tenant: t{t} }, path_prefix: /api }`;
//! 2. a list of the tenant's uids: `{ uid_in: [ten uids] }`;
//! 3. a split of the tenant's new pages: `{ host: t{t}.example.com, path_prefix: /new }`;
//! 4. a suffix host rule: `{ host: "*.t{t}.example.net", method: [POST] }`.
//!
//! Two rules without a key condition come first (paid users keep stable; a header opt-in),
//! so every request has at least those candidates.

use std::fmt::Write;

/// Tenants of a set of `rules` rules.
pub fn tenants(rules: usize) -> usize {
    rules.div_ceil(5).max(1)
}

/// The services section: one service per tenant host for `hosts` tenants (each with its
/// `*.t{t}.example.net` suffix), then `*`; the groups of service `t` on `peer(t)` (the
/// catch-all's on `peer(hosts)`).
pub fn services(hosts: usize, peer: &dyn Fn(usize) -> String) -> String {
    let mut y = String::from("services:\n");
    let groups = |p: String| {
        format!(
            "    groups:\n      stable: {{ peers: [\"{p}\"] }}\n      canary: {{ peers: [\"{p}\"] }}\n      beta: {{ peers: [\"{p}\"] }}\n"
        )
    };
    for t in 0..hosts {
        let _ = writeln!(
            y,
            "  svc{t}:\n    hosts: [\"t{t}.example.com\", \"*.t{t}.example.net\"]"
        );
        y.push_str(&groups(peer(t)));
    }
    y.push_str("  app:\n    hosts: [\"*\"]\n");
    y.push_str(&groups(peer(hosts)));
    y
}

/// A whole rules file: versions, identity, `services(hosts)` and `rules` rules.
pub fn rule_set(rules: usize, hosts: usize, peer: &dyn Fn(usize) -> String) -> String {
    let mut y = String::from(
        "versions: { stable: {}, canary: {}, beta: { selectable: true } }\ndefault: stable\n\
         identity:\n  uid: [cookie:uid, header:X-User-Id]\n  \
         tier: { sources: [cookie:tier], paid_uids: [10001], default: trial }\n",
    );
    y.push_str(&services(hosts, peer));
    y.push_str("rules:\n");
    y.push_str("  - { name: shield-paid, when: { tier: paid }, version: stable }\n");
    y.push_str(
        "  - { name: opt-in, when: { header: { X-Beta: { prefix: \"yes\" } } }, version: beta }\n",
    );
    for r in 0..rules.saturating_sub(2) {
        let t = r / 5;
        let _ = match r % 5 {
            0 => writeln!(y, "  - {{ name: host{t}, when: {{ host: t{t}.example.com, uid_tail: [1, 2] }}, version: canary }}"),
            1 => writeln!(y, "  - {{ name: api{t}, when: {{ header: {{ X-Tenant: t{t} }}, path_prefix: /api }}, version: canary }}"),
            2 => {
                let uids: Vec<String> = (0..10).map(|u| format!("\"{t}0000{u}\"")).collect();
                writeln!(y, "  - {{ name: list{t}, when: {{ uid_in: [{}] }}, version: beta }}", uids.join(", "))
            }
            3 => writeln!(y, "  - {{ name: new{t}, when: {{ host: t{t}.example.com, path_prefix: /new }}, split: {{ by: uid, weights: {{ canary: 10, stable: 90 }} }} }}"),
            _ => writeln!(y, "  - {{ name: sfx{t}, when: {{ host: \"*.t{t}.example.net\", method: [POST] }}, version: canary }}"),
        };
    }
    y
}
