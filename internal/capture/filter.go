package capture

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"

	"github.com/gopacket/gopacket/layers"
	"golang.org/x/net/bpf"

	"github.com/netdoctor/netdoctor/internal/command"
)

// maxInstructions is the kernel's BPF_MAXINSNS.
const maxInstructions = 4096

// ErrBadFilter is returned (wrapped) when a filter expression does not compile.
var ErrBadFilter = errors.New("bad capture filter")

// dltName is tcpdump's -y name of a link type.
func dltName(lt layers.LinkType) (string, error) {
	switch lt {
	case layers.LinkTypeEthernet:
		return "EN10MB", nil
	case layers.LinkTypeRaw:
		return "RAW", nil
	}
	return "", fmt.Errorf("link type %v not supported for capture filters", lt)
}

// Compilers a filter can be compiled by.
const (
	CompilerBuiltin = "builtin" // netdoctor's own (compile.go)
	CompilerTcpdump = "tcpdump" // libpcap's, through `tcpdump -ddd`
)

// CompileFilter compiles a tcpdump filter expression to classic BPF for the
// given link type, with snaplen as the accepted packets' capture length, and
// says which compiler did it. netdoctor's own compiler handles the common
// subset (see compile.go) with nothing installed; anything else is compiled
// by `tcpdump -ddd` (libpcap's compiler; the expression is one argument,
// never through a shell, and nothing is captured by it). When the built-in
// compiler rejects an expression and tcpdump is installed, tcpdump has the
// last word, so libpcap syntax netdoctor does not know still works.
func CompileFilter(ctx context.Context, expr string, lt layers.LinkType, snaplen int) ([]bpf.RawInstruction, string, error) {
	if strings.TrimSpace(expr) == "" {
		return []bpf.RawInstruction{{Op: 0x06, K: uint32(snaplen)}}, CompilerBuiltin, nil // ret #snaplen
	}
	prog, err := CompileBuiltin(expr, lt, snaplen)
	if err == nil {
		return prog, CompilerBuiltin, nil
	}
	ref, terr := compileTcpdump(ctx, expr, lt, snaplen)
	if terr == nil {
		return ref, CompilerTcpdump, nil
	}
	if errors.Is(terr, command.ErrNotFound) {
		if errors.Is(err, ErrBadFilter) {
			return nil, "", err
		}
		return nil, "", fmt.Errorf("compile filter %q: %w, and %w", expr, err, terr)
	}
	return nil, "", terr
}

// compileTcpdump compiles with libpcap's compiler through `tcpdump -ddd`.
func compileTcpdump(ctx context.Context, expr string, lt layers.LinkType, snaplen int) ([]bpf.RawInstruction, error) {
	dlt, err := dltName(lt)
	if err != nil {
		return nil, err
	}
	r, err := command.Run(ctx, command.Cmd{Name: "tcpdump",
		Args: []string{"-ddd", "-y", dlt, "-s", strconv.Itoa(snaplen), "--", expr}})
	if err != nil {
		if errors.Is(err, command.ErrNotFound) {
			return nil, fmt.Errorf("compile filter %q: tcpdump (only used as the filter compiler): %w", expr, err)
		}
		msg := ""
		if r != nil {
			msg = strings.TrimSpace(string(r.Stderr))
			msg = strings.TrimPrefix(msg, "tcpdump: ")
		}
		if msg == "" {
			msg = err.Error()
		}
		return nil, fmt.Errorf("%w %q: %s", ErrBadFilter, expr, msg)
	}
	prog, err := ParseDDD(r.Stdout)
	if err != nil {
		return nil, fmt.Errorf("compile filter %q: %w", expr, err)
	}
	return prog, nil
}

// ParseDDD parses `tcpdump -ddd` output: a count line, then one instruction
// per line as four decimal numbers "code jt jf k". The program is checked
// by decoding every instruction.
func ParseDDD(out []byte) ([]bpf.RawInstruction, error) {
	sc := bufio.NewScanner(bytes.NewReader(out))
	if !sc.Scan() {
		return nil, errors.New("empty BPF program")
	}
	n, err := strconv.Atoi(strings.TrimSpace(sc.Text()))
	if err != nil || n <= 0 || n > maxInstructions {
		return nil, fmt.Errorf("BPF program length %q invalid", sc.Text())
	}
	prog := make([]bpf.RawInstruction, 0, n)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" {
			continue
		}
		f := strings.Fields(line)
		if len(f) != 4 {
			return nil, fmt.Errorf("BPF instruction %q: want 4 fields", line)
		}
		var v [4]uint64
		for i, s := range f {
			bits := []int{16, 8, 8, 32}[i]
			v[i], err = strconv.ParseUint(s, 10, bits)
			if err != nil {
				return nil, fmt.Errorf("BPF instruction %q: %w", line, err)
			}
		}
		prog = append(prog, bpf.RawInstruction{Op: uint16(v[0]), Jt: uint8(v[1]), Jf: uint8(v[2]), K: uint32(v[3])})
	}
	if len(prog) != n {
		return nil, fmt.Errorf("BPF program has %d instructions, header says %d", len(prog), n)
	}
	for i, ins := range prog {
		if int(ins.Jt)+i+1 > len(prog) || int(ins.Jf)+i+1 > len(prog) {
			return nil, fmt.Errorf("BPF instruction %d jumps past the end", i)
		}
	}
	if _, ok := bpf.Disassemble(prog); !ok {
		return nil, errors.New("BPF program has instructions that do not decode")
	}
	return prog, nil
}
