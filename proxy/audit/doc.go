// Package audit owns metaguard's audit record: its fields and their JSON
// names, the decision and reason codes, the writer that turns records into
// one JSON line each (batched, on a file that is reopened for logrotate,
// with a per-source budget for denial lines), and the reader that turns the
// lines back into records for `metaguard suggest`.
//
// One owner per contract: the proxy, suggest and the tests all go through
// this package, so a field or a reason cannot be written one way and read
// another. Every reason declares who decides it (the policy, or the proxy
// before or beside the policy) where it is declared; a reader that meets a
// code it does not know treats it as decided by nobody, so learning never
// mistakes a line the proxy forwarded on its own authority for a policy
// decision.
//
// It never holds query values, bodies, tokens or response content: only
// names and outcomes.
//
// The reader has two readings of a line that FuzzDecode holds to the same
// result: Decode, on encoding/json, the reference; and Reader's direct
// path for lines shaped as the Writer writes them, several times faster
// on real logs (BenchmarkDecode), which is what `metaguard suggest` over a
// week of a node's log needs.
//
// Public surface: Record, Decision (and its values, ParseDecision), Reason
// (and its values, ParseReason, Reasons), Writer (NewWriter, Options, Write,
// Run, Flush), File (OpenFile, Reopen), Decode, ErrNotRecord, Reader
// (NewReader, Next, Line), LineError, ErrLineTooLong, MaxLineBytes, ReadAll,
// Fields.
package audit
