package proxy

import (
	"context"
	"io"
	"log/slog"
	"net/netip"
	"slices"
	"strings"
	"time"

	"metaguard.dev/metaguard/identity"
)

// auditLog writes one JSON object per request. It is its own logger with
// its own destination, separate from operational logs, so that it can be
// shipped and retained on its own terms.
type auditLog struct {
	log *slog.Logger
}

func newAuditLog(w io.Writer) *auditLog {
	h := slog.NewJSONHandler(w, &slog.HandlerOptions{
		ReplaceAttr: func(groups []string, a slog.Attr) slog.Attr {
			// An audit line is a record, not a message: no level, no msg.
			if len(groups) == 0 && (a.Key == slog.LevelKey || a.Key == slog.MessageKey) {
				return slog.Attr{}
			}
			return a
		},
	})
	return &auditLog{log: slog.New(h)}
}

// auditRecord is one request as the audit log tells it. It holds no query
// values, bodies, tokens or response content: only names and outcomes.
type auditRecord struct {
	src       netip.Addr
	id        identity.Identity
	endpoint  string
	method    string
	path      string
	queryKeys []string
	decision  string
	rule      string
	reason    string
	status    int
	bytes     int64
	duration  time.Duration
}

func (a *auditLog) write(ctx context.Context, r *auditRecord) {
	src := ""
	if r.src.IsValid() {
		src = r.src.String()
	}
	keys := r.queryKeys
	if keys == nil {
		keys = []string{}
	}
	a.log.LogAttrs(ctx, slog.LevelInfo, "",
		slog.String("src_ip", src),
		slog.String("pod", r.id.Name),
		slog.String("namespace", r.id.Namespace),
		slog.String("pod_uid", r.id.UID),
		slog.String("service_account", r.id.ServiceAccount),
		labelsAttr(r.id.Labels),
		slog.String("endpoint", r.endpoint),
		slog.String("method", r.method),
		slog.String("path", r.path),
		slog.Any("query_keys", keys),
		slog.String("decision", r.decision),
		slog.String("rule", r.rule),
		slog.String("reason", r.reason),
		slog.Int("status", r.status),
		slog.Int64("bytes", r.bytes),
		slog.Float64("duration_ms", float64(r.duration.Microseconds())/1000),
	)
}

// labelsAttr renders labels as a JSON object through slog's own encoder,
// sorted by key: encoding a map with slog.Any goes through reflection and
// encoding/json, which cost more than the rest of the line together.
func labelsAttr(m map[string]string) slog.Attr {
	if len(m) == 0 {
		// slog drops an empty group; the field must still be there.
		return slog.Any("labels", struct{}{})
	}
	attrs := make([]slog.Attr, 0, len(m))
	for k, v := range m {
		attrs = append(attrs, slog.String(k, v))
	}
	slices.SortFunc(attrs, func(a, b slog.Attr) int { return strings.Compare(a.Key, b.Key) })
	return slog.Attr{Key: "labels", Value: slog.GroupValue(attrs...)}
}
