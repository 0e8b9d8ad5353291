package redirect

import (
	"context"
	"fmt"
	"net/netip"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"sync"
)

// fakeTables is an in-memory iptables for one family and back end. It
// prints rules the way iptables -S does, exits 1 for missing chains and
// rules as both back ends do, and records every command so tests can assert
// on what the reconciler did (or did not) write.
type fakeTables struct {
	mu       sync.Mutex
	chains   map[string]map[string]*fakeChain // table -> chain
	touched  map[string]bool                  // tables accessed, as legacy creates them
	ops      []string
	failOn   func(op string) error                      // injected failure, checked before each command
	beforeOp func(f *fakeTables, op string) (done bool) // runs before each command until it returns true
}

type fakeChain struct {
	builtin bool
	rules   [][]string
}

type fakeErr struct {
	status int
	msg    string
}

func (e *fakeErr) Error() string   { return fmt.Sprintf("exit status %d: %s", e.status, e.msg) }
func (e *fakeErr) ExitStatus() int { return e.status }

var fakeBuiltins = map[string][]string{
	"nat":    {"PREROUTING", "INPUT", "OUTPUT", "POSTROUTING"},
	"filter": {"INPUT", "FORWARD", "OUTPUT"},
	"mangle": {"PREROUTING", "INPUT", "FORWARD", "OUTPUT", "POSTROUTING"},
}

var fakeTargets = []string{"ACCEPT", "DROP", "RETURN", "DNAT", "REJECT", "MASQUERADE", "MARK"}

func newFakeTables() *fakeTables {
	f := &fakeTables{chains: map[string]map[string]*fakeChain{}, touched: map[string]bool{}}
	for table, names := range fakeBuiltins {
		f.chains[table] = map[string]*fakeChain{}
		for _, n := range names {
			f.chains[table][n] = &fakeChain{builtin: true}
		}
	}
	return f
}

// begin records an operation and returns the injected failure, if any.
// The caller holds f.mu.
func (f *fakeTables) begin(table, op string) error {
	f.touched[table] = true
	f.ops = append(f.ops, op)
	if f.beforeOp != nil && f.beforeOp(f, op) {
		f.beforeOp = nil
	}
	if f.failOn != nil {
		return f.failOn(op)
	}
	return nil
}

func (f *fakeTables) chain(table, name string) (*fakeChain, error) {
	c, ok := f.chains[table][name]
	if !ok {
		return nil, &fakeErr{1, "No chain/target/match by that name."}
	}
	return c, nil
}

func quote(spec []string) string {
	out := make([]string, len(spec))
	for i, s := range spec {
		if strings.ContainsAny(s, " \"") {
			s = `"` + strings.ReplaceAll(s, `"`, `\"`) + `"`
		}
		out[i] = s
	}
	return strings.Join(out, " ")
}

func (f *fakeTables) List(table, chain string) ([]string, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.begin(table, "list "+table+" "+chain); err != nil {
		return nil, err
	}
	c, err := f.chain(table, chain)
	if err != nil {
		return nil, err
	}
	lines := []string{"-N " + chain}
	if c.builtin {
		lines = []string{"-P " + chain + " ACCEPT"}
	}
	for _, r := range c.rules {
		lines = append(lines, "-A "+chain+" "+quote(r))
	}
	return lines, nil
}

func (f *fakeTables) ListChains(table string) ([]string, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.begin(table, "list-chains "+table); err != nil {
		return nil, err
	}
	var names []string
	for n := range f.chains[table] {
		names = append(names, n)
	}
	slices.Sort(names)
	return names, nil
}

func (f *fakeTables) checkTarget(table string, spec []string) error {
	for i := 0; i+1 < len(spec); i++ {
		if spec[i] == "-j" && !slices.Contains(fakeTargets, spec[i+1]) {
			if _, ok := f.chains[table][spec[i+1]]; !ok {
				return &fakeErr{2, "Couldn't load target `" + spec[i+1] + "'"}
			}
		}
	}
	return nil
}

func (f *fakeTables) Insert(table, chain string, pos int, spec ...string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.begin(table, fmt.Sprintf("insert %s %s %d %s", table, chain, pos, quote(spec))); err != nil {
		return err
	}
	return f.insertLocked(table, chain, pos, spec)
}

func (f *fakeTables) insertLocked(table, chain string, pos int, spec []string) error {
	c, err := f.chain(table, chain)
	if err != nil {
		return err
	}
	if err := f.checkTarget(table, spec); err != nil {
		return err
	}
	if pos < 1 || pos > len(c.rules)+1 {
		return &fakeErr{1, "Index of insertion too big."}
	}
	c.rules = slices.Insert(c.rules, pos-1, slices.Clone(spec))
	return nil
}

func (f *fakeTables) Delete(table, chain string, spec ...string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.begin(table, fmt.Sprintf("delete %s %s %s", table, chain, quote(spec))); err != nil {
		return err
	}
	c, err := f.chain(table, chain)
	if err != nil {
		return err
	}
	// Like iptables, -D matches the rule's meaning and removes the first match.
	i := slices.IndexFunc(c.rules, func(r []string) bool { return sameRule(r, spec) })
	if i < 0 {
		return &fakeErr{1, "Bad rule (does a matching rule exist in that chain?)."}
	}
	c.rules = slices.Delete(c.rules, i, i+1)
	return nil
}

func (f *fakeTables) DeleteById(table, chain string, id int) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.begin(table, fmt.Sprintf("delete-id %s %s %d", table, chain, id)); err != nil {
		return err
	}
	c, err := f.chain(table, chain)
	if err != nil {
		return err
	}
	if id < 1 || id > len(c.rules) {
		return &fakeErr{1, "Index of deletion too big."}
	}
	c.rules = slices.Delete(c.rules, id-1, id)
	return nil
}

func (f *fakeTables) NewChain(table, chain string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.begin(table, "new-chain "+table+" "+chain); err != nil {
		return err
	}
	if _, ok := f.chains[table][chain]; ok {
		return &fakeErr{1, "Chain already exists."}
	}
	f.chains[table][chain] = &fakeChain{}
	return nil
}

func (f *fakeTables) ClearAndDeleteChain(table, chain string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.begin(table, "delete-chain "+table+" "+chain); err != nil {
		return err
	}
	c, ok := f.chains[table][chain]
	if !ok {
		return nil
	}
	if c.builtin {
		return &fakeErr{2, "Can't delete built-in chain"}
	}
	for name, other := range f.chains[table] {
		for _, r := range other.rules {
			if jumpsTo(r, chain) {
				return &fakeErr{1, "Too many links: referenced from " + name}
			}
		}
	}
	delete(f.chains[table], chain)
	return nil
}

// save is a deterministic dump of every table, like iptables-save.
func (f *fakeTables) save() string {
	f.mu.Lock()
	defer f.mu.Unlock()
	var b strings.Builder
	for _, table := range []string{"filter", "mangle", "nat"} {
		fmt.Fprintf(&b, "*%s\n", table)
		var names []string
		for n := range f.chains[table] {
			names = append(names, n)
		}
		slices.Sort(names)
		for _, n := range names {
			fmt.Fprintf(&b, ":%s\n", n)
		}
		for _, n := range names {
			for _, r := range f.chains[table][n].rules {
				fmt.Fprintf(&b, "-A %s %s\n", n, quote(r))
			}
		}
	}
	return b.String()
}

// restore replaces the whole state with a dump made by save, as another
// agent's iptables-restore would.
func (f *fakeTables) restore(dump string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	var table string
	f.chains = map[string]map[string]*fakeChain{}
	for _, line := range strings.Split(dump, "\n") {
		switch {
		case strings.HasPrefix(line, "*"):
			table = line[1:]
			f.chains[table] = map[string]*fakeChain{}
		case strings.HasPrefix(line, ":"):
			name := line[1:]
			f.chains[table][name] = &fakeChain{builtin: slices.Contains(fakeBuiltins[table], name)}
		case strings.HasPrefix(line, "-A "):
			chain, spec, _ := parseRule(line)
			f.chains[table][chain].rules = append(f.chains[table][chain].rules, spec)
		}
	}
}

// run applies an iptables-like command line directly, for test set-up and
// for simulating other agents: "-t nat -I PREROUTING 1 -j KUBE-SERVICES".
func (f *fakeTables) run(cmdline string) {
	args := splitQuoted(cmdline)
	f.mu.Lock()
	defer f.mu.Unlock()
	table := args[1]
	f.touched[table] = true
	op, chain, rest := args[2], args[3], args[4:]
	var err error
	switch op {
	case "-N":
		f.chains[table][chain] = &fakeChain{}
	case "-F":
		f.chains[table][chain].rules = nil
	case "-X":
		delete(f.chains[table], chain)
	case "-A":
		c := f.chains[table][chain]
		err = f.insertLocked(table, chain, len(c.rules)+1, rest)
	case "-I":
		pos, _ := strconv.Atoi(rest[0])
		err = f.insertLocked(table, chain, pos, rest[1:])
	default:
		panic("fake: unsupported " + cmdline)
	}
	if err != nil {
		panic(fmt.Sprintf("fake: %s: %v", cmdline, err))
	}
}

// writes lists the recorded commands that change state.
func (f *fakeTables) writes() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []string
	for _, op := range f.ops {
		if !strings.HasPrefix(op, "list") {
			out = append(out, op)
		}
	}
	return out
}

func (f *fakeTables) resetOps() {
	f.mu.Lock()
	f.ops = nil
	f.mu.Unlock()
}

// fakeSystem holds one fakeTables per family and back end; a nil entry is
// a missing binary.
type fakeSystem struct {
	tables   map[backend]map[family]*fakeTables
	flushes  *fakeFlusher
	rules    *fakeRules
	watchers []changeWatcher
}

func newFakeSystem(bs ...backend) *fakeSystem {
	s := &fakeSystem{tables: map[backend]map[family]*fakeTables{}, flushes: &fakeFlusher{}, rules: newFakeRules()}
	for _, b := range bs {
		s.tables[b] = map[family]*fakeTables{ipv4: newFakeTables(), ipv6: newFakeTables()}
	}
	return s
}

func (s *fakeSystem) system() *system {
	return &system{
		newRunner: func(f family, b backend) (runner, error) {
			if t := s.tables[b][f]; t != nil {
				return t, nil
			}
			return nil, &exec.Error{Name: binaryName(f, b), Err: exec.ErrNotFound}
		},
		legacyTables: func(f family) ([]string, error) {
			t := s.tables[backendLegacy][f]
			if t == nil {
				return nil, nil
			}
			t.mu.Lock()
			defer t.mu.Unlock()
			var names []string
			for n := range t.touched {
				names = append(names, n)
			}
			slices.Sort(names)
			return names, nil
		},
		flusher:  s.flushes,
		rules:    s.rules,
		watchers: func(backend) []changeWatcher { return s.watchers },
	}
}

type fakeFlusher struct {
	mu   sync.Mutex
	dsts []netip.AddrPort
	err  error
}

func (f *fakeFlusher) Flush(_ context.Context, dst netip.AddrPort) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.dsts = append(f.dsts, dst)
	return f.err
}

func (f *fakeFlusher) take() []netip.AddrPort {
	f.mu.Lock()
	defer f.mu.Unlock()
	d := f.dsts
	f.dsts = nil
	return d
}
