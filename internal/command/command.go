// Package command is netdoctor's one wrapper for running other programs
// (iptables-save, nft, ip...). Arguments are passed as data, never through a
// shell, and a network namespace can be given to run the program inside.
package command

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os/exec"
	"strings"

	"github.com/netdoctor/netdoctor/internal/namespace"
)

// Result is what a program printed and how it ended.
type Result struct {
	Stdout   []byte
	Stderr   []byte
	ExitCode int
}

// Cmd is a program to run.
type Cmd struct {
	Name  string   // program name or path
	Args  []string // arguments, passed as data
	Netns string   // network namespace path to run in; "" = current
	Stdin []byte   // optional input
	Env   []string // extra environment, KEY=VALUE
}

// ErrNotFound is returned (wrapped) when the program is not installed.
var ErrNotFound = errors.New("program not found")

// Run runs the command and waits. A non-zero exit is an error that includes
// the program's stderr; the Result is returned in every case where the
// program ran.
func Run(ctx context.Context, c Cmd) (*Result, error) {
	path, err := exec.LookPath(c.Name)
	if err != nil {
		return nil, fmt.Errorf("%s: %w (install it, e.g. apt-get install %s)", c.Name, ErrNotFound, packageOf(c.Name))
	}
	var res Result
	err = namespace.Do(c.Netns, func() error {
		cmd := exec.CommandContext(ctx, path, c.Args...)
		var out, errb bytes.Buffer
		cmd.Stdout, cmd.Stderr = &out, &errb
		if c.Stdin != nil {
			cmd.Stdin = bytes.NewReader(c.Stdin)
		}
		if len(c.Env) > 0 {
			cmd.Env = append(cmd.Environ(), c.Env...)
		}
		runErr := cmd.Run()
		res.Stdout, res.Stderr = out.Bytes(), errb.Bytes()
		if cmd.ProcessState != nil {
			res.ExitCode = cmd.ProcessState.ExitCode()
		}
		return runErr
	})
	if err != nil {
		msg := strings.TrimSpace(string(res.Stderr))
		if msg != "" {
			return &res, fmt.Errorf("%s %s: %w: %s", c.Name, strings.Join(c.Args, " "), err, msg)
		}
		return &res, fmt.Errorf("%s %s: %w", c.Name, strings.Join(c.Args, " "), err)
	}
	return &res, nil
}

// Output runs the command and returns its stdout.
func Output(ctx context.Context, netnsPath, name string, args ...string) ([]byte, error) {
	r, err := Run(ctx, Cmd{Name: name, Args: args, Netns: netnsPath})
	if err != nil {
		return nil, err
	}
	return r.Stdout, nil
}

func packageOf(name string) string {
	switch {
	case strings.HasPrefix(name, "iptables"), strings.HasPrefix(name, "ip6tables"):
		return "iptables"
	case name == "nft":
		return "nftables"
	case name == "ip", name == "bridge", name == "ss":
		return "iproute2"
	}
	return name
}
