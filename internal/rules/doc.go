// Package rules is netdoctor's rule engine and its node-level rules: each rule
// is a registered record (finding ID from FAULTS.md, severity, the fact
// sections it needs, docs) whose Run is a pure function of a node snapshot and
// optional cluster hints. No I/O, no clock: the same rules run live (node
// check), offline (analyze) and in tests.
package rules
