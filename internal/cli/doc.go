// Package cli holds netdoctor's cobra commands. Each command group lives in
// its own file and registers itself with Register from an init function, so
// that groups can be added without touching the root.
package cli
