package cli

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"

	"github.com/spf13/cobra"

	"github.com/netdoctor/netdoctor/internal/facts"
	"github.com/netdoctor/netdoctor/internal/rules"
)

func init() { Register(newAnalyzeCommand) }

// LoadSnapshot reads a node snapshot written by `node collect`. Every way it
// can be wrong (missing, empty, not JSON, not a node snapshot, a version this
// build does not read) is an error naming the file and the problem.
func LoadSnapshot(path string) (*facts.NodeSnapshot, error) {
	var data []byte
	var err error
	if path == "-" {
		data, err = io.ReadAll(os.Stdin)
	} else {
		data, err = os.ReadFile(path)
	}
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil, fmt.Errorf("read snapshot %s: no such file", path)
		}
		return nil, fmt.Errorf("read snapshot %s: %w", path, err)
	}
	if len(bytes.TrimSpace(data)) == 0 {
		return nil, fmt.Errorf("read snapshot %s: the file is empty (write one with `netdoctor node collect -f %s`)", path, path)
	}
	var snap facts.NodeSnapshot
	if err := json.Unmarshal(data, &snap); err != nil {
		var se *json.SyntaxError
		if errors.As(err, &se) {
			line := 1 + bytes.Count(data[:min(int(se.Offset), len(data))], []byte("\n"))
			return nil, fmt.Errorf("read snapshot %s: not valid JSON at line %d: %w", path, line, err)
		}
		return nil, fmt.Errorf("read snapshot %s: not a node snapshot: %w", path, err)
	}
	switch {
	case snap.Version == "":
		return nil, fmt.Errorf("read snapshot %s: not a node snapshot (no \"version\": %q field; write one with `netdoctor node collect`)", path, facts.NodeSnapshotVersion)
	case snap.Version != facts.NodeSnapshotVersion:
		return nil, fmt.Errorf("read snapshot %s: version %q, this netdoctor reads %q", path, snap.Version, facts.NodeSnapshotVersion)
	}
	return &snap, nil
}

func newAnalyzeCommand() *cobra.Command {
	var before string
	var h hintFlags
	cmd := &cobra.Command{
		Use:   "analyze FILE [--before FILE]",
		Short: "Run the node rules offline on a snapshot saved by `node collect`",
		Long: `Run every node rule on a saved snapshot, without touching the system. With
--before (an earlier snapshot of the same node), counters are compared: the
conntrack insert_failed/drop and interface/softnet drop findings report the
rise between the two instead of the totals since boot.

Exit status: 0 no critical or warning finding, 1 findings, 2 a snapshot could
not be read (the message names the file and what is wrong).`,
		Example: `  netdoctor node collect -f before.json; sleep 60; netdoctor node collect -f after.json
  netdoctor analyze after.json --before before.json`,
		Args: func(cmd *cobra.Command, args []string) error {
			if len(args) != 1 {
				return UsageError("analyze needs one snapshot FILE (got %d arguments)", len(args))
			}
			return nil
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := CheckOutput(); err != nil {
				return err
			}
			hints, err := h.hints()
			if err != nil {
				return err
			}
			snap, err := LoadSnapshot(args[0])
			if err != nil {
				return UsageError("%v", err)
			}
			in := &rules.Input{Node: snap, Hints: hints}
			if before != "" {
				b, err := LoadSnapshot(before)
				if err != nil {
					return UsageError("--before: %v", err)
				}
				if b.Node != snap.Node {
					return UsageError("--before %s is of node %q, %s of node %q: compare snapshots of the same node", before, b.Node, args[0], snap.Node)
				}
				if !b.CollectedAt.IsZero() && !snap.CollectedAt.IsZero() && !b.CollectedAt.Before(snap.CollectedAt) {
					return UsageError("--before %s was collected at %s, not before %s (%s): swap them", before, b.CollectedAt.Format("2006-01-02T15:04:05Z07:00"), args[0], snap.CollectedAt.Format("2006-01-02T15:04:05Z07:00"))
				}
				in.Before = b
			}
			return render(cmd, rules.Evaluate(in))
		},
	}
	cmd.Flags().StringVar(&before, "before", "", "an earlier snapshot of the same node: report counters that rose between the two")
	h.addFlags(cmd)
	return cmd
}
