package main

import (
	"context"
	"errors"
	"flag"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/policy"
	"github.com/Azure/azure-sdk-for-go/sdk/azidentity"
)

// azureTransport is nil (azcore's own) except in tests, which point the
// hard-coded IMDS address at a fake.
var azureTransport policy.Transporter

// azureToken gets a token for RESOURCE from IMDS with azidentity's
// ManagedIdentityCredential (or, with -dac, DefaultAzureCredential, which
// probes IMDS first and reads AZURE_CLIENT_ID). Retry options left at zero
// keep azidentity's IMDS defaults.
func azureToken(ctx context.Context, _ globals, args []string) (result, error) {
	fs := flag.NewFlagSet("azure-token", flag.ContinueOnError)
	clientID := fs.String("client-id", "", "user-assigned identity by client id")
	objectID := fs.String("object-id", "", "user-assigned identity by object id")
	resourceID := fs.String("resource-id", "", "user-assigned identity by resource id")
	dac := fs.Bool("dac", false, "use DefaultAzureCredential")
	var retry policy.RetryOptions
	fs.Func("max-retries", "retries after the first try (-1: none; 0: azidentity's default)", func(s string) error {
		d, err := parseInt32(s)
		retry.MaxRetries = d
		return err
	})
	fs.DurationVar(&retry.RetryDelay, "retry-delay", 0, "first retry delay (0: azidentity's default)")
	fs.DurationVar(&retry.MaxRetryDelay, "max-retry-delay", 0, "retry delay cap (0: azidentity's default)")
	if err := fs.Parse(args); err != nil || fs.NArg() != 1 {
		return result{}, errUsage
	}
	resource := fs.Arg(0)
	copts := azcore.ClientOptions{Retry: retry, Transport: azureTransport}
	var cred azcore.TokenCredential
	var err error
	if *dac {
		cred, err = azidentity.NewDefaultAzureCredential(&azidentity.DefaultAzureCredentialOptions{ClientOptions: copts})
	} else {
		opts := &azidentity.ManagedIdentityCredentialOptions{ClientOptions: copts}
		switch {
		case *clientID != "":
			opts.ID = azidentity.ClientID(*clientID)
		case *objectID != "":
			opts.ID = azidentity.ObjectID(*objectID)
		case *resourceID != "":
			opts.ID = azidentity.ResourceID(*resourceID)
		}
		cred, err = azidentity.NewManagedIdentityCredential(opts)
	}
	if err != nil {
		return result{}, err
	}
	var r result
	tok, err := cred.GetToken(ctx, policy.TokenRequestOptions{Scopes: []string{resource + "/.default"}})
	if err != nil {
		r.set("token", "", err)
		var afe *azidentity.AuthenticationFailedError
		if errors.As(err, &afe) && afe.RawResponse != nil {
			r.Status = afe.RawResponse.StatusCode
		}
		return r.finish(), nil
	}
	r.set("token", tok.Token, nil)
	r.set("expires_in", time.Until(tok.ExpiresOn).Round(time.Minute).String(), nil)
	return r.finish(), nil
}
