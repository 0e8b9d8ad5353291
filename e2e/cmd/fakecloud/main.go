package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sync/errgroup"

	"metaguard.dev/metaguard/e2e/fakecloud"
)

func main() { os.Exit(run()) }

func run() int {
	fs := flag.NewFlagSet("fakecloud", flag.ContinueOnError)
	flavor := fs.String("flavor", "", "gcp or azure")
	listen := fs.String("listen", "", "comma-separated addresses for the metadata API")
	control := fs.String("control", "127.0.0.1:9001", "address for the control API")
	dns := fs.String("dns", "", "comma-separated UDP addresses to answer DNS on (gcp: the metadata server is also the VPC's resolver)")
	quirks := fs.String("quirks", "", "comma-separated quirks to start with: honour-range, honour-if-none-match, dns-silent")
	if err := fs.Parse(os.Args[1:]); err != nil {
		return 2
	}
	log := slog.New(slog.NewJSONHandler(os.Stderr, nil))
	srv, err := fakecloud.New(fakecloud.Flavor(*flavor))
	if err != nil || *listen == "" {
		fmt.Fprintf(os.Stderr, "fakecloud: need -flavor gcp|azure and -listen (%v)\n", err)
		return 2
	}
	q, err := parseQuirks(*quirks)
	if err != nil {
		fmt.Fprintf(os.Stderr, "fakecloud: %v\n", err)
		return 2
	}
	srv.SetQuirks(q)

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	g, ctx := errgroup.WithContext(ctx)
	serve := func(addr string, h http.Handler) error {
		// Listen before serving so that a bad address fails the start, not
		// the first request.
		ln, err := net.Listen("tcp", addr)
		if err != nil {
			return fmt.Errorf("listening on %s: %w", addr, err)
		}
		hs := &http.Server{Handler: h, ReadHeaderTimeout: 5 * time.Second}
		g.Go(func() error {
			<-ctx.Done()
			sctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			defer cancel()
			return hs.Shutdown(sctx)
		})
		g.Go(func() error {
			if err := hs.Serve(ln); !errors.Is(err, http.ErrServerClosed) {
				return err
			}
			return nil
		})
		log.Info("serving", "addr", addr, "flavor", *flavor)
		return nil
	}
	for _, addr := range splitList(*listen) {
		if err := serve(addr, srv.Handler()); err != nil {
			log.Error("start", "err", err)
			stop()
			_ = g.Wait()
			return 1
		}
	}
	for _, addr := range splitList(*dns) {
		pc, err := net.ListenPacket("udp", addr)
		if err != nil {
			log.Error("start", "err", fmt.Errorf("listening for DNS on %s: %w", addr, err))
			stop()
			_ = g.Wait()
			return 1
		}
		g.Go(func() error {
			<-ctx.Done()
			return pc.Close()
		})
		g.Go(func() error { return srv.ServeDNS(pc) })
		log.Info("serving DNS", "addr", addr)
	}
	if err := serve(*control, srv.ControlHandler()); err != nil {
		log.Error("start", "err", err)
		stop()
		_ = g.Wait()
		return 1
	}
	if err := g.Wait(); err != nil {
		log.Error("serve", "err", err)
		return 1
	}
	return 0
}

func splitList(s string) []string {
	if s == "" {
		return nil
	}
	return strings.Split(s, ",")
}

func parseQuirks(s string) (fakecloud.Quirks, error) {
	var q fakecloud.Quirks
	for _, name := range splitList(s) {
		switch name {
		case "honour-range":
			q.HonourRange = true
		case "honour-if-none-match":
			q.HonourIfNoneMatch = true
		case "dns-silent":
			q.DNSSilent = true
		default:
			return q, fmt.Errorf("unknown quirk %q", name)
		}
	}
	return q, nil
}
