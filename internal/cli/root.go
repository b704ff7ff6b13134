package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"sort"
	"strings"
	"syscall"

	"github.com/spf13/cobra"
)

// Exit codes of every netdoctor command (see ARCHITECTURE.md).
const (
	ExitOK       = 0 // nothing critical or warning
	ExitFindings = 1 // findings of severity warning or critical
	ExitError    = 2 // the tool could not do its job (bad input, unreachable API...)
)

// ExitCodeError carries the exit code a command wants, with an optional
// message. A nil Err with Code 1 means "findings were reported".
type ExitCodeError struct {
	Code int
	Err  error
}

func (e *ExitCodeError) Error() string {
	if e.Err == nil {
		return fmt.Sprintf("exit code %d", e.Code)
	}
	return e.Err.Error()
}

func (e *ExitCodeError) Unwrap() error { return e.Err }

// UsageError returns an error that exits with code 2 and prints msg.
func UsageError(format string, args ...any) error {
	return &ExitCodeError{Code: ExitError, Err: fmt.Errorf(format, args...)}
}

// FindingsExit returns the error that makes the command exit 1 silently.
func FindingsExit() error { return &ExitCodeError{Code: ExitFindings} }

// GlobalOptions are the flags every command shares.
type GlobalOptions struct {
	Verbose bool
	Output  string // text or json
}

// Globals holds the parsed global flags.
var Globals GlobalOptions

var registry []func() *cobra.Command

// Register adds a top-level command constructor. Call it from init.
func Register(f func() *cobra.Command) { registry = append(registry, f) }

// NewRootCommand builds the command tree. The name is netdoctor, or
// "kubectl netdoctor" when run as a kubectl plugin.
func NewRootCommand(argv0 string) *cobra.Command {
	use := "netdoctor"
	if strings.HasPrefix(filepath.Base(argv0), "kubectl-") {
		use = "kubectl netdoctor"
	}
	root := &cobra.Command{
		Use:   use,
		Short: "Diagnose Kubernetes cluster networking in seconds, with proof",
		Long: `netdoctor finds the known ways Kubernetes networking breaks (ip_forward off, a
firewall eating VXLAN, MTU too large, kube-proxy missing or misconfigured, stale
service rules, DNS failing from some nodes) and shows the evidence and the fix.`,
		SilenceUsage:  true,
		SilenceErrors: true,
		PersistentPreRun: func(cmd *cobra.Command, _ []string) {
			level := slog.LevelWarn
			if Globals.Verbose {
				level = slog.LevelDebug
			}
			slog.SetDefault(slog.New(slog.NewTextHandler(cmd.ErrOrStderr(), &slog.HandlerOptions{Level: level})))
		},
	}
	root.PersistentFlags().BoolVarP(&Globals.Verbose, "verbose", "v", false, "log details to stderr")
	root.PersistentFlags().StringVarP(&Globals.Output, "output", "o", "text", "output format: text or json")
	root.SetFlagErrorFunc(func(_ *cobra.Command, err error) error {
		return &ExitCodeError{Code: ExitError, Err: err}
	})
	cmds := make([]*cobra.Command, 0, len(registry))
	for _, f := range registry {
		cmds = append(cmds, f())
	}
	sort.Slice(cmds, func(i, j int) bool { return cmds[i].Name() < cmds[j].Name() })
	root.AddCommand(cmds...)
	return root
}

// CheckOutput validates the -o flag.
func CheckOutput() error {
	switch Globals.Output {
	case "text", "json":
		return nil
	}
	return UsageError("unknown output format %q: use -o text or -o json", Globals.Output)
}

// Main runs netdoctor with the given argv and returns the exit code.
func Main(argv []string) int {
	return Run(argv, os.Stdout, os.Stderr)
}

// Run runs the command tree with args argv[1:], writing to stdout and stderr.
// The context is cancelled on SIGINT/SIGTERM so that commands clean up.
func Run(argv []string, stdout, stderr io.Writer) int {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	root := NewRootCommand(argv[0])
	root.SetArgs(argv[1:])
	root.SetOut(stdout)
	root.SetErr(stderr)
	err := root.ExecuteContext(ctx)
	if err == nil {
		return ExitOK
	}
	var ec *ExitCodeError
	if errors.As(err, &ec) {
		if ec.Err != nil {
			fmt.Fprintf(stderr, "Error: %v\n", ec.Err)
		}
		return ec.Code
	}
	// Anything else (unknown command, wrong argument count, failed work) means
	// the tool could not do its job.
	fmt.Fprintf(stderr, "Error: %v\n", err)
	return ExitError
}
