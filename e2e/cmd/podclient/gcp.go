package main

import (
	"context"
	"errors"
	"flag"
	"strconv"
	"strings"

	"cloud.google.com/go/compute/metadata"
	"golang.org/x/oauth2/google"
)

// gcpFacts reads what workloads ask GCE's metadata server for, through
// cloud.google.com/go/compute/metadata's package functions (its default
// client, as every Google Cloud client library uses it): OnGCE first, which
// probes 169.254.169.254 and metadata.google.internal, then each fact.
func gcpFacts(ctx context.Context, _ globals, args []string) (result, error) {
	if err := wantArgs(args, 0); err != nil {
		return result{}, err
	}
	var r result
	r.set("on_gce", strconv.FormatBool(metadata.OnGCEWithContext(ctx)), nil)
	str := func(name string, f func(context.Context) (string, error)) {
		v, err := f(ctx)
		r.set(name, v, err)
	}
	list := func(name string, f func(context.Context) ([]string, error)) {
		v, err := f(ctx)
		r.set(name, strings.Join(v, ","), err)
	}
	str("project_id", metadata.ProjectIDWithContext)
	str("numeric_project_id", metadata.NumericProjectIDWithContext)
	str("zone", metadata.ZoneWithContext)
	str("instance_id", metadata.InstanceIDWithContext)
	str("instance_name", metadata.InstanceNameWithContext)
	str("hostname", metadata.HostnameWithContext)
	str("internal_ip", metadata.InternalIPWithContext)
	list("instance_attributes", metadata.InstanceAttributesWithContext)
	list("instance_tags", metadata.InstanceTagsWithContext)
	str("cluster_name", func(ctx context.Context) (string, error) {
		return metadata.InstanceAttributeValueWithContext(ctx, "cluster-name")
	})
	str("email", func(ctx context.Context) (string, error) { return metadata.EmailWithContext(ctx, "") })
	list("scopes", func(ctx context.Context) ([]string, error) { return metadata.ScopesWithContext(ctx, "") })
	return r.finish(), nil
}

// gcpGet reads raw suffixes (a listing, "?alt=json", a recursive dump).
func gcpGet(ctx context.Context, _ globals, args []string) (result, error) {
	if len(args) == 0 {
		return result{}, errUsage
	}
	var r result
	for _, suffix := range args {
		v, err := metadata.GetWithContext(ctx, suffix)
		r.set(suffix, v, err)
	}
	return r.finish(), nil
}

// gcpToken gets an access token the way Application Default Credentials
// do on GCE (golang.org/x/oauth2/google.FindDefaultCredentials: no
// GOOGLE_APPLICATION_CREDENTIALS, no gcloud file, then OnGCE and the
// metadata server's token endpoint).
func gcpToken(ctx context.Context, _ globals, args []string) (result, error) {
	fs := flag.NewFlagSet("gcp-token", flag.ContinueOnError)
	scope := fs.String("scope", "https://www.googleapis.com/auth/cloud-platform", "OAuth scope")
	if err := fs.Parse(args); err != nil || fs.NArg() != 0 {
		return result{}, errUsage
	}
	var r result
	creds, err := google.FindDefaultCredentials(ctx, *scope)
	if err != nil {
		r.set("credentials", "", err)
		return r.finish(), nil
	}
	r.set("project_id", creds.ProjectID, nil)
	tok, err := creds.TokenSource.Token()
	if err != nil {
		r.set("token", "", err)
		return r.finish(), nil
	}
	r.set("token", tok.AccessToken, nil)
	return r.finish(), nil
}

var errSubscribed = errors.New("second value seen")

// gcpSubscribe follows a value with the library's SubscribeWithContext
// (wait_for_change with last_etag) until it changes once.
func gcpSubscribe(ctx context.Context, _ globals, args []string) (result, error) {
	if err := wantArgs(args, 1); err != nil {
		return result{}, err
	}
	var r result
	calls := 0
	err := metadata.SubscribeWithContext(ctx, args[0], func(_ context.Context, v string, ok bool) error {
		calls++
		if calls == 1 {
			r.set("initial", v, nil)
			return nil
		}
		r.set("changed", v, nil)
		r.set("deleted", strconv.FormatBool(!ok), nil)
		return errSubscribed
	})
	if !errors.Is(err, errSubscribed) {
		r.set("subscribe", "", err)
	}
	return r.finish(), nil
}

// gcpStatus is the status of a metadata server error: 404 is
// NotDefinedError, anything else but 200 is *metadata.Error.
func gcpStatus(err error) int {
	var me *metadata.Error
	if errors.As(err, &me) {
		return me.Code
	}
	var nd metadata.NotDefinedError
	if errors.As(err, &nd) {
		return 404
	}
	return 0
}
