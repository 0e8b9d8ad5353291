package audit

import (
	"fmt"
	"os"
	"sync"
)

// File is an audit log destination: stdout, or a file appended to and
// reopened on request (SIGHUP), so logrotate can move it away without
// copytruncate.
type File struct {
	path string
	mu   sync.Mutex
	f    *os.File
}

// OpenFile opens path for appending, creating it mode 0600; "" or "-" is
// stdout, which Reopen and Close leave alone.
func OpenFile(path string) (*File, error) {
	if path == "-" || path == "" {
		return &File{f: os.Stdout}, nil
	}
	a := &File{path: path}
	if err := a.Reopen(); err != nil {
		return nil, err
	}
	return a, nil
}

// Reopen opens the path again and switches to it; writes in flight finish
// on the old file. A no-op for stdout.
func (a *File) Reopen() error {
	if a.path == "" {
		return nil
	}
	f, err := os.OpenFile(a.path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o600)
	if err != nil {
		return fmt.Errorf("opening audit log: %w", err)
	}
	a.mu.Lock()
	old := a.f
	a.f = f
	a.mu.Unlock()
	if old != nil {
		old.Close()
	}
	return nil
}

func (a *File) Write(p []byte) (int, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.f.Write(p)
}

// Close closes the file; stdout stays open.
func (a *File) Close() error {
	if a.path == "" {
		return nil
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.f.Close()
}
