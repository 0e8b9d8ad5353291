package redirect

import (
	"log/slog"
	"testing"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

func discard() *slog.Logger { return slog.New(slog.DiscardHandler) }

// hookOf is the hook of one of our chains.
func hookOf(chain string) hook {
	for _, h := range hooks {
		if h.chain == chain {
			return h
		}
	}
	panic("no hook for " + chain)
}
