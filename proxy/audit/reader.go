package audit

import (
	"bufio"
	"bytes"
	"compress/gzip"
	"errors"
	"fmt"
	"io"
)

// MaxLineBytes bounds one audit line. Real lines are a few hundred bytes;
// the bound only stops a corrupt file (no newlines) from growing the
// reader's buffer without limit.
const MaxLineBytes = 1 << 20

// ErrLineTooLong marks a line longer than MaxLineBytes; it is skipped whole.
var ErrLineTooLong = fmt.Errorf("audit line longer than %d bytes", MaxLineBytes)

// LineError is a line that is not a record. Reading can go on after it.
type LineError struct {
	Line int // 1-based
	Err  error
}

func (e *LineError) Error() string { return fmt.Sprintf("line %d: %v", e.Line, e.Err) }
func (e *LineError) Unwrap() error { return e.Err }

// Reader reads an audit log record by record, in memory that does not
// grow with the log: JSON lines as the Writer writes them, plain or gzip
// (told apart by the magic bytes, so rotated logs need no renaming; a gzip
// stream of several members, as cat *.gz makes, reads as one).
//
// Records it returns share their Labels and QueryKeys with other records
// of the same log; like every Record's, they are never to be modified.
type Reader struct {
	br   *bufio.Reader
	dec  decoder
	buf  []byte // a line longer than br's buffer, assembled
	line int
	err  error // sticky: the end of the log, or a read error
}

// NewReader starts reading r. Its only error is a gzip header that does
// not read.
func NewReader(r io.Reader) (*Reader, error) {
	br := bufio.NewReaderSize(r, 64<<10)
	if magic, _ := br.Peek(2); len(magic) == 2 && magic[0] == 0x1f && magic[1] == 0x8b {
		gz, err := gzip.NewReader(br)
		if err != nil {
			return nil, fmt.Errorf("reading a gzip audit log: %w", err)
		}
		br = bufio.NewReaderSize(gz, 64<<10)
	}
	return &Reader{br: br}, nil
}

// Next reads the next record into rec, skipping blank lines. At the end of
// the log it returns io.EOF. A line that is not a record is a *LineError
// (wrapping ErrNotRecord for JSON that carries no decision, ErrLineTooLong,
// or what is wrong with it), and the next call reads on; any other error
// is the log's, and ends it.
func (r *Reader) Next(rec *Record) error {
	for r.err == nil {
		line, tooLong, err := r.readLine()
		r.line++
		r.err = err
		if tooLong {
			return &LineError{Line: r.line, Err: ErrLineTooLong}
		}
		if len(bytes.TrimSpace(line)) == 0 {
			continue
		}
		if derr := r.dec.decode(line, rec); derr != nil {
			return &LineError{Line: r.line, Err: derr}
		}
		return nil
	}
	if errors.Is(r.err, io.EOF) {
		return io.EOF
	}
	return fmt.Errorf("reading the audit log at line %d: %w", r.line, r.err)
}

// Line is the number of the line Next read last.
func (r *Reader) Line() int { return r.line }

// readLine returns the next line without its newline. A line longer than
// MaxLineBytes is consumed and reported as tooLong.
func (r *Reader) readLine() (line []byte, tooLong bool, err error) {
	frag, err := r.br.ReadSlice('\n')
	if !errors.Is(err, bufio.ErrBufferFull) {
		// The common case: the line fits the reader's buffer, no copy.
		return bytes.TrimSuffix(frag, []byte("\n")), false, err
	}
	r.buf = append(r.buf[:0], frag...)
	for errors.Is(err, bufio.ErrBufferFull) {
		frag, err = r.br.ReadSlice('\n')
		if !tooLong {
			r.buf = append(r.buf, frag...)
			if len(r.buf) > MaxLineBytes+1 {
				tooLong, r.buf = true, r.buf[:0]
			}
		}
	}
	if tooLong {
		return nil, true, err
	}
	line = bytes.TrimSuffix(r.buf, []byte("\n"))
	if len(line) > MaxLineBytes {
		return nil, true, err
	}
	return line, false, err
}

// ReadAll reads every record of a log. Unlike Next, it accepts nothing
// else: any line that is not a record is an error naming its line. It is
// for logs known to hold only audit lines, as tests' are.
func ReadAll(r io.Reader) ([]Record, error) {
	rd, err := NewReader(r)
	if err != nil {
		return nil, err
	}
	var out []Record
	for {
		var rec Record
		switch err := rd.Next(&rec); {
		case errors.Is(err, io.EOF):
			return out, nil
		case err != nil:
			return out, err
		}
		out = append(out, rec)
	}
}
