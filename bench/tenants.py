#!/usr/bin/env python3
"""The per-tenant rule set of issue 18, as benches/support/tenants.rs writes it (keep the two
in step): `bench/tenants.py RULES HOSTS PEER [VARIANT]` prints a rules file of RULES rules and
HOSTS tenant services, every group on PEER (host:port); VARIANT goes into a comment, so each
variant is a new generation for a reload."""
import sys


def services(hosts, peer):
    groups = (
        "    groups:\n"
        f"      stable: {{ peers: [\"{peer}\"] }}\n"
        f"      canary: {{ peers: [\"{peer}\"] }}\n"
        f"      beta: {{ peers: [\"{peer}\"] }}\n"
    )
    out = ["services:\n"]
    for t in range(hosts):
        out.append(f"  svc{t}:\n    hosts: [\"t{t}.example.com\", \"*.t{t}.example.net\"]\n" + groups)
    out.append("  app:\n    hosts: [\"*\"]\n" + groups)
    return "".join(out)


def rule_set(rules, hosts, peer, variant=0):
    out = [
        f"# variant {variant}\n",
        "versions: { stable: {}, canary: {}, beta: { selectable: true } }\ndefault: stable\n",
        "identity:\n  uid: [cookie:uid, header:X-User-Id]\n",
        "  tier: { sources: [cookie:tier], paid_uids: [10001], default: trial }\n",
        services(hosts, peer),
        "rules:\n",
        "  - { name: shield-paid, when: { tier: paid }, version: stable }\n",
        "  - { name: opt-in, when: { header: { X-Beta: { prefix: \"yes\" } } }, version: beta }\n",
    ]
    for r in range(max(rules - 2, 0)):
        t, kind = divmod(r, 5)
        if kind == 0:
            out.append(f"  - {{ name: host{t}, when: {{ host: t{t}.example.com, uid_tail: [1, 2] }}, version: canary }}\n")
        elif kind == 1:
            out.append(f"  - {{ name: api{t}, when: {{ header: {{ X-Tenant: t{t} }}, path_prefix: /api }}, version: canary }}\n")
        elif kind == 2:
            uids = ", ".join(f"\"{t}0000{u}\"" for u in range(10))
            out.append(f"  - {{ name: list{t}, when: {{ uid_in: [{uids}] }}, version: beta }}\n")
        elif kind == 3:
            out.append(f"  - {{ name: new{t}, when: {{ host: t{t}.example.com, path_prefix: /new }}, split: {{ by: uid, weights: {{ canary: 10, stable: 90 }} }} }}\n")
        else:
            out.append(f"  - {{ name: sfx{t}, when: {{ host: \"*.t{t}.example.net\", method: [POST] }}, version: canary }}\n")
    return "".join(out)


if __name__ == "__main__":
    rules, hosts, peer = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
    variant = int(sys.argv[4]) if len(sys.argv) > 4 else 0
    sys.stdout.write(rule_set(rules, hosts, peer, variant))
