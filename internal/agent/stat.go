package agent

import "golang.org/x/sys/unix"

// statIno reads a file's inode (a network namespace's identity).
type statIno struct{ ino uint64 }

func (s *statIno) of(path string) bool {
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		return false
	}
	s.ino = st.Ino
	return true
}
