#!/usr/bin/env python3
"""Where the instructions of a callgrind window go, per completed call.

Reads callgrind output files (valgrind 3.19's format; several files are summed, e.g. the
processes of a Kamailio) and prints markdown:

  purpose   each function's own instructions (self cost) go to the purpose of the innermost
            function on its call path that has one (PURPOSES: SIP parsing, digest, routing
            lookup, SDP, relay set-up...): malloc called while parsing counts as parsing.
            Callgrind keeps caller->callee pairs, not whole stacks, so a function without a
            purpose splits its cost among its callers in proportion to what each call cost
            (exact for direct callees, an estimate one level further down). Columns: how much
            of it is allocation, copying and formatting (the KINDS below).
  kind      self cost by kind of code, wherever it ran: allocation (malloc/free/realloc),
            copies (memcpy...), formatting (core::fmt), hashing, the rest.
  counts    calls per SIP call of a few functions (malloc, Via::parse, ...).
  top       the functions with the highest self and inclusive cost (one line per function:
            callgrind_annotate lists a function once per source file its inlined code comes
            from).

  areas.py --calls N FILE...     the tables (N: completed calls of the window)
  areas.py --totals FILE...      the sum of the files' `totals:` lines (Ir)

Only user-space instructions are counted: callgrind does not see the kernel (a `bind` or a
`sendto` costs its libc wrapper here, not the kernel's work).
"""

import argparse
import re
import sys
from collections import defaultdict

# Purposes: (name, regex on the demangled function name). First match wins.
PURPOSES = [
    ("digest (challenge, verify: MD5, SHA-256/HMAC nonce)",
     r"trunkline::sip::digest|md5|Md5|md_5::|sha2::|hmac::|^<?digest::|block_buffer"),
    ("SDP (parse, codec policy, rewrite, print)",
     r"trunkline::media::sdp|trunkline::media::codec|ezk_sdp_types|Sdp as core::fmt"),
    ("routing lookup, admission, per-source guard",
     r"trunkline::config::|trunkline::call::limits|trunkline::call::guard|ipnet::"),
    ("RTP relay set-up/tear-down (ports, sockets, relay task)",
     r"trunkline::media::(relay|ports|stats)|socket2::|std::net::udp|std::sys::net|"
     r"tokio::net::udp|^(__)?bind$|^(__)?socket$|^setsockopt|^getsockname"),
    ("SIP message building (to_bytes, header edits)",
     r"trunkline::sip::msg::.*(to_bytes|::print|to_header|Display>::fmt)|"
     r"trunkline::sip::msg::Headers::(set|push|insert|remove|replace|append)|"
     r"trunkline::call::headers"),
    ("SIP parsing (messages, header re-parses)",
     r"trunkline::sip::msg|trunkline::sip::framer|ezk_sip_types|<ezk_sip_types"),
    ("transactions, timers (sip::transaction, tokio time)",
     r"trunkline::sip::transaction|trunkline::sip::session_timer|tokio::runtime::time|"
     r"tokio::time"),
    ("logging, metrics, call records",
     r"tracing|prometheus|trunkline::observe"),
    ("UDP send/receive (transport, libc wrappers)",
     r"trunkline::sip::transport::Transports::send|^sendto$|^__libc_sendto|^recvfrom$|"
     r"^__libc_recvfrom|^sendmsg$|^recvmsg$|^__libc_sendmsg|^__libc_recvmsg|"
     r"tokio::net::udp::UdpSocket::(send|recv)"),
    ("call task: B2BUA machine, dialogs, driver",
     r"trunkline::call::(machine|driver|inbound|services|record|placed|transfer|health)"),
    ("front door: receive loop, dispatch by Call-ID, new-INVITE checks",
     r"trunkline::call::gateway|trunkline::call::|trunkline::sip::transport"),
    ("async runtime: scheduler, wake-ups, task spawn, epoll",
     r"tokio::runtime::(scheduler|task|park|io::driver|context|blocking|handle)|"
     r"tokio::task|tokio::sync|mio::|parking_lot|std::thread|std::sys::.*thread|"
     r"^epoll_wait$|^__GI_epoll|^start_thread$|^clone3?$|futex|^syscall$"),
]
P_COMPILED = [(n, re.compile(p)) for n, p in PURPOSES]
UNATTRIBUTED = "unattributed (no caller seen with a purpose)"

KINDS = [
    ("allocation",
     r"^(malloc|free|realloc|calloc|cfree|_int_malloc|_int_free|_int_realloc|"
     r"malloc_consolidate|tcache_|unlink_chunk|__libc_(malloc|free|calloc|realloc)|"
     r"sysmalloc|systrim|_int_memalign|posix_memalign|aligned_alloc|arena_get2|"
     r"__rust_(alloc|dealloc|realloc|alloc_zeroed)|__rustc::__r(dl|g)_|__rdl_|"
     r"alloc::alloc::|alloc::raw_vec::|<alloc::raw_vec|"
     # Kamailio's own allocators
     r"qm_|fm_|tlsf_|_shm_|shm_malloc|shm_free|pkg_malloc|pkg_free)"),
    ("copies (memcpy/memmove/memset/memcmp/strlen/memchr)",
     r"^(__)?(memcpy|memmove|memset|mempcpy|memcmp|bcmp|strlen|memchr|memrchr|rawmemchr|"
     r"strchr|strcmp|strncmp|strcasecmp|strncasecmp|stpcpy|wmemset)|"
     r"core::slice::memchr"),
    ("formatting (core::fmt, to_string)",
     r"core::fmt|alloc::fmt|as core::fmt::(Display|Debug|Write)>|::pad_integral|"
     r"<alloc::string::String as core::fmt::Write>"),
    ("hashing (SipHash, hashbrown)",
     r"core::hash|std::hash|hashbrown|SipHasher|siphasher|ahash|fxhash"),
    ("drop glue", r"core::ptr::drop_in_place"),
]
K_COMPILED = [(n, re.compile(p)) for n, p in KINDS]
K_REST = "the rest"

# Functions whose call counts per SIP call are shown (exact names, or a prefix ending in `*`).
COUNTED = [
    ("malloc", "malloc"), ("free", "free"), ("realloc", "realloc"),
    ("memcpy", "__memcpy_avx_unaligned_erms"),
    ("sip::msg::parse (whole messages)", "trunkline::sip::msg::parse"),
    ("Via::parse", "trunkline::sip::msg::Via::parse"),
    ("NameAddr::parse", "trunkline::sip::msg::NameAddr::parse"),
    ("top_via", "trunkline::sip::msg::top_via"),
    ("core::fmt::write", "core::fmt::write"),
    ("Sdp Display (SDP printed)", "<trunkline::media::sdp::Sdp as core::fmt::Display>::fmt"),
    ("tokio spawn (tasks started)", "tokio::runtime::task::core::Cell<*"),
    ("sendto", "sendto"), ("recvfrom", "recvfrom"), ("epoll_wait", "epoll_wait"),
    # Kamailio
    ("qm_malloc", "qm_malloc"), ("qm_free", "qm_free"), ("parse_msg", "parse_msg"),
    ("receive_msg", "receive_msg"), ("MD5Transform", "MD5Transform"),
]

NAME = re.compile(r"^\((\d+)\)(?: (.*))?$")


class Profile:
    def __init__(self):
        self.self_cost = defaultdict(int)
        self.edge = defaultdict(int)    # (caller, callee) -> inclusive cost of those calls
        self.ncalls = defaultdict(int)  # (caller, callee) -> number of calls
        self.totals = 0

    def read(self, path):
        names = {"ob": {}, "fl": {}, "fn": {}}
        kind_of = {"ob": "ob", "cob": "ob", "fl": "fl", "fi": "fl", "fe": "fl", "cfi": "fl",
                   "cfl": "fl", "fn": "fn", "cfn": "fn"}
        fn = cfn = None
        npos = 1
        pending_calls = None
        seen_totals = False
        with open(path, encoding="utf-8", errors="replace") as f:
            for line in f:
                line = line.rstrip("\n")
                if not line:
                    continue
                c = line[0]
                if c.isdigit() or c in "+-*":
                    parts = line.split()
                    cost = int(parts[npos]) if len(parts) > npos else 0
                    if pending_calls is not None:
                        if fn is not None and cfn is not None and cfn != fn:
                            self.edge[(fn, cfn)] += cost
                            self.ncalls[(fn, cfn)] += pending_calls
                        pending_calls = None
                    elif fn is not None:
                        self.self_cost[fn] += cost
                    continue
                key, _, value = line.partition("=")
                if key in kind_of:
                    m = NAME.match(value)
                    if m:
                        table = names[kind_of[key]]
                        if m.group(2) is not None:
                            table[m.group(1)] = m.group(2)
                        value = table.get(m.group(1), "?")
                    if key == "fn":
                        fn = value
                    elif key == "cfn":
                        cfn = value
                    continue
                if key == "calls":
                    pending_calls = int(value.split()[0])
                    continue
                if line.startswith("positions:"):
                    npos = len(line.split()) - 1
                elif line.startswith("totals:"):
                    self.totals += int(line.split()[1])
                    seen_totals = True
        if not seen_totals:
            self.totals += sum(self.self_cost.values())

    def functions(self):
        fns = set(self.self_cost)
        for a, b in self.edge:
            fns.add(a)
            fns.add(b)
        return fns

    def inclusive(self):
        inc = defaultdict(int)
        for fn, c in self.self_cost.items():
            inc[fn] += c
        for (a, _), c in self.edge.items():
            inc[a] += c
        return inc


def classify(name, rules, default=None):
    for n, rx in rules:
        if rx.search(name):
            return n
    return default


def purposes(p):
    """The purpose distribution of every function: its own, or its callers' (weighted)."""
    fns = p.functions()
    own = {fn: classify(fn, P_COMPILED) for fn in fns}
    callers = defaultdict(list)
    for (a, b), c in p.edge.items():
        if c > 0:
            callers[b].append((a, c))
    dist = {fn: ({own[fn]: 1.0} if own[fn] else {UNATTRIBUTED: 1.0}) for fn in fns}
    for _ in range(60):  # to a fixed point (call cycles converge geometrically)
        changed = 0.0
        for fn in fns:
            if own[fn] or not callers[fn]:
                continue
            total = sum(c for _, c in callers[fn])
            new = defaultdict(float)
            for a, c in callers[fn]:
                for area, share in dist[a].items():
                    new[area] += share * c / total
            old = dist[fn]
            changed = max(changed, max(abs(new.get(k, 0) - old.get(k, 0))
                                       for k in set(new) | set(old)))
            dist[fn] = dict(new)
        if changed < 1e-6:
            break
    return dist


def fmt(n):
    return f"{n:,.0f}"


def short(name, width=140):
    return name if len(name) <= width else name[: width - 1] + "…"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--calls", type=int, default=0, help="completed calls of the window")
    ap.add_argument("--totals", action="store_true", help="print the summed totals only")
    ap.add_argument("--top", type=int, default=25, help="functions in the top lists")
    ap.add_argument("--no-purpose", action="store_true", help="skip the purpose table")
    ap.add_argument("files", nargs="+")
    a = ap.parse_args()

    p = Profile()
    for path in a.files:
        p.read(path)
    if a.totals:
        print(p.totals)
        return
    calls = max(a.calls, 1)
    counted = sum(p.self_cost.values())
    print(f"Window: {fmt(p.totals)} Ir, {a.calls} completed calls: "
          f"**{fmt(p.totals / calls)} Ir per call**\n")

    kind = {fn: classify(fn, K_COMPILED, K_REST) for fn in p.functions()}
    kind_cols = [n for n, _ in KINDS[:3]]

    if not a.no_purpose:
        dist = purposes(p)
        by = defaultdict(lambda: defaultdict(float))
        for fn, c in p.self_cost.items():
            for area, share in dist[fn].items():
                by[area][kind[fn]] += share * c
                by[area]["all"] += share * c
        print("| purpose (innermost on the call path) | Ir per call | share | "
              + " | ".join(f"of which {k.split(' (')[0]}" for k in kind_cols) + " |")
        print("| --- | ---: | ---: | " + " | ".join("---:" for _ in kind_cols) + " |")
        for area, row in sorted(by.items(), key=lambda kv: -kv[1]["all"]):
            print(f"| {area} | {fmt(row['all'] / calls)} | {100 * row['all'] / counted:.1f} % | "
                  + " | ".join(fmt(row[k] / calls) for k in kind_cols) + " |")
        print()

    kinds = defaultdict(int)
    for fn, c in p.self_cost.items():
        kinds[kind[fn]] += c
    print("| kind of code (self cost, wherever it ran) | Ir per call | share |")
    print("| --- | ---: | ---: |")
    for k, c in sorted(kinds.items(), key=lambda kv: -kv[1]):
        print(f"| {k} | {fmt(c / calls)} | {100 * c / counted:.1f} % |")
    print()

    into = defaultdict(int)
    for (_, b), n in p.ncalls.items():
        into[b] += n
    inc = p.inclusive()
    rows = []
    for label, target in COUNTED:
        if target.endswith("*"):
            fns = [f for f in into if f.startswith(target[:-1])]
        else:
            fns = [f for f in into if f == target]
        n = sum(into[f] for f in fns)
        if n:
            cost = sum(inc[f] for f in fns)
            rows.append((label, n, cost))
    if rows:
        print("| function | calls per SIP call | Ir per SIP call (inclusive) |")
        print("| --- | ---: | ---: |")
        for label, n, cost in rows:
            print(f"| `{label}` | {n / calls:,.1f} | {fmt(cost / calls)} |")
        print()

    print(f"Top {a.top} functions by self cost (Ir per call, share of the window):")
    for fn, c in sorted(p.self_cost.items(), key=lambda kv: -kv[1])[: a.top]:
        print(f"  {fmt(c / calls):>10} {100 * c / p.totals:5.1f} %  {short(fn)}")
    print()
    print(f"Top {a.top} functions by inclusive cost (Ir per call, share of the window; "
          "the runtime's entry points come first):")
    for fn, c in sorted(inc.items(), key=lambda kv: -kv[1])[: a.top]:
        print(f"  {fmt(c / calls):>10} {100 * c / p.totals:5.1f} %  {short(fn)}")


if __name__ == "__main__":
    sys.exit(main())
