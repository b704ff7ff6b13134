package collect

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
)

// Files read verbatim when present (paths relative to Options.RootDir).
const (
	FlannelSubnetFile = "/run/flannel/subnet.env"
	CNIConfDir        = "/etc/cni/net.d"
)

// collectFiles reads flannel's subnet.env and the CNI configuration files
// (*.conf, *.conflist) into Files, keyed by their path on the node, and
// parses subnet.env into Flannel. Absent files are not errors.
func (c *collector) collectFiles() {
	files := map[string]string{}
	root := c.opts.RootDir
	if b, err := readSmallFile(filepath.Join(root, FlannelSubnetFile)); err == nil {
		files[FlannelSubnetFile] = string(b)
		fs, perr := ParseSubnetEnv(bytes.NewReader(b))
		if perr != nil {
			c.fail("files."+FlannelSubnetFile, fmt.Errorf("parse %s: %w", FlannelSubnetFile, perr))
		} else {
			c.snap.Flannel = fs
		}
	} else if !errors.Is(err, os.ErrNotExist) {
		c.fail("files."+FlannelSubnetFile, fmt.Errorf("read %s: %w", FlannelSubnetFile, err))
	}
	ents, err := os.ReadDir(filepath.Join(root, CNIConfDir))
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		c.fail("files."+CNIConfDir, fmt.Errorf("list %s: %w", CNIConfDir, err))
	}
	for _, e := range ents {
		if !strings.Contains(e.Name(), ".conf") {
			continue
		}
		p := CNIConfDir + "/" + e.Name()
		b, err := readSmallFile(filepath.Join(root, p))
		if err != nil {
			c.fail("files."+p, fmt.Errorf("read %s: %w", p, err))
			continue
		}
		files[p] = string(b)
	}
	if len(files) > 0 {
		c.snap.Files = files
	}
}
