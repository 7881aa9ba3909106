package main

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/spf13/pflag"

	"github.com/mandate-dev/mandate/authz/mandate"
	"github.com/mandate-dev/mandate/xds/mandatev1"
)

func inspectCmd(fs *pflag.FlagSet) runFunc {
	var mf mandateFlags
	mf.register(fs)
	var verify bool
	var keysFile, issuer, audience, holder string
	fs.BoolVar(&verify, "verify", false, "verify the signature and times with mandate-cp's current keys (or --keys)")
	fs.StringVar(&keysFile, "keys", "", "verify with keys from this JSON file ([{\"kid\":..,\"public_key\":base64}], as mandate-authz --mandate-keys) instead of asking mandate-cp")
	fs.StringVar(&issuer, "issuer", "", "issuer to require with --keys (default spiffe://example.org/mandate/cp)")
	fs.StringVar(&audience, "audience", "mandate", "audience to require with --keys")
	fs.StringVar(&holder, "holder", "", "also check the mandate is held by this SPIFFE ID")
	o := newOutputFlag(fs, "text", "yaml", "json")
	return func(ctx context.Context, pos []string, stdout, stderr io.Writer) error {
		if err := o.check(); err != nil {
			return err
		}
		if len(pos) != 1 {
			return usagef("want one TOKEN, or - to read it from stdin")
		}
		token := pos[0]
		if token == "-" {
			b, err := io.ReadAll(io.LimitReader(os.Stdin, 64<<10))
			if err != nil {
				return err
			}
			token = strings.TrimSpace(string(b))
		}
		header, claims, err := decodeToken(token)
		if err != nil {
			return err
		}
		// -o yaml|json: header, claims and the verification result.
		res := struct {
			Header       map[string]any  `json:"header"`
			Claims       *mandate.Claims `json:"claims"`
			Verification string          `json:"verification"`
		}{Header: header, Claims: claims, Verification: "not verified"}
		text := stdout
		if o.value != "text" {
			text = io.Discard
			defer func() { _ = printValue(stdout, o.value, res) }()
		}
		printClaims(text, header, claims, time.Now())
		if keysFile != "" {
			verify = true
		}
		if !verify {
			fmt.Fprintln(text, "signature: not verified (use --verify)")
			return nil
		}
		var keys []mandate.Key
		if keysFile != "" {
			if keys, err = mandate.ReadKeyFile(keysFile); err != nil {
				return fmt.Errorf("--keys: %w", err)
			}
			if issuer == "" {
				issuer = defCPID
			}
		} else {
			cctx, conn, done, err := mf.conn(ctx, nil)
			if err != nil {
				return err
			}
			defer done()
			resp, err := mandatev1.NewMandatesClient(conn).VerificationKeys(cctx, &mandatev1.MandateKeysRequest{})
			if err != nil {
				return rpcErr(err)
			}
			issuer, audience = resp.GetIssuer(), resp.GetAudience()
			for _, k := range resp.GetKeys() {
				key := mandate.Key{ID: k.GetName(), Public: k.GetPublicKey()}
				if k.GetNotBefore() != nil {
					key.NotBefore = k.GetNotBefore().AsTime()
				}
				if k.GetNotAfter() != nil {
					key.NotAfter = k.GetNotAfter().AsTime()
				}
				keys = append(keys, key)
			}
		}
		v, err := mandate.NewVerifier(mandate.VerifierConfig{Issuer: issuer, Audience: audience, Keys: keys, CacheSize: -1, MaxDepth: mandate.MaxChainDepth})
		if err != nil {
			return err
		}
		c, err := v.Verify(token)
		if err == nil && holder != "" {
			err = c.CheckHolder(holder)
		}
		if err != nil {
			res.Verification = fmt.Sprintf("INVALID (%s): %v", mandate.ReasonOf(err), err)
			fmt.Fprintf(text, "verification: %s\n", res.Verification)
			return exitError{code: exitDenied}
		}
		res.Verification = fmt.Sprintf("OK (issuer %s, audience %s, %d key(s))", issuer, audience, len(keys))
		fmt.Fprintf(text, "verification: %s\n", res.Verification)
		return nil
	}
}

// decodeToken splits a compact JWS and decodes header and claims without
// checking anything but the shape.
func decodeToken(token string) (map[string]any, *mandate.Claims, error) {
	if len(token) > mandate.DefaultMaxTokenBytes {
		return nil, nil, fmt.Errorf("token is %d bytes, limit %d", len(token), mandate.DefaultMaxTokenBytes)
	}
	parts := strings.Split(token, ".")
	if len(parts) != 3 {
		return nil, nil, fmt.Errorf("not a compact JWS: %d parts", len(parts))
	}
	hb, err := base64.RawURLEncoding.DecodeString(parts[0])
	if err != nil {
		return nil, nil, fmt.Errorf("header: %w", err)
	}
	var header map[string]any
	if err := json.Unmarshal(hb, &header); err != nil {
		return nil, nil, fmt.Errorf("header: %w", err)
	}
	cb, err := base64.RawURLEncoding.DecodeString(parts[1])
	if err != nil {
		return nil, nil, fmt.Errorf("claims: %w", err)
	}
	var c mandate.Claims
	if err := json.Unmarshal(cb, &c); err != nil {
		return nil, nil, fmt.Errorf("claims: %w", err)
	}
	return header, &c, nil
}

func printClaims(w io.Writer, header map[string]any, c *mandate.Claims, now time.Time) {
	fmt.Fprintf(w, "header:    alg=%v kid=%v typ=%v\n", header["alg"], header["kid"], header["typ"])
	fmt.Fprintf(w, "id:        %s\n", c.ID)
	fmt.Fprintf(w, "issuer:    %s\n", c.Issuer)
	fmt.Fprintf(w, "audience:  %s\n", c.Audience)
	fmt.Fprintf(w, "subject:   %s\n", c.Subject)
	fmt.Fprintf(w, "task:      %s\n", c.Task)
	fmt.Fprintf(w, "intent:    %s\n", c.Intent)
	state := "valid for " + c.ExpiryTime().Sub(now).Round(time.Second).String()
	if !now.Before(c.ExpiryTime()) {
		state = "EXPIRED " + now.Sub(c.ExpiryTime()).Round(time.Second).String() + " ago"
	}
	fmt.Fprintf(w, "issued:    %s\n", c.IssuedAtTime().Local().Format(time.RFC3339))
	fmt.Fprintf(w, "expires:   %s (%s, lifetime %s)\n", c.ExpiryTime().Local().Format(time.RFC3339), state, c.TTL())
	fmt.Fprintln(w, "scope:")
	for _, f := range []struct {
		name string
		l    []string
		any  bool
	}{
		{"destinations", c.Scope.Destinations, true}, {"hosts", c.Scope.Hosts, true}, {"methods", c.Scope.Methods, true},
		{"paths", c.Scope.Paths, false}, {"grpc", c.Scope.GRPC, false},
	} {
		v := strings.Join(f.l, ", ")
		if v == "" {
			v = "(none)"
			if f.any {
				v = "(any)"
			}
		}
		fmt.Fprintf(w, "  %-13s %s\n", f.name+":", v)
	}
	if m := c.Scope.MCP; m != nil {
		methods := strings.Join(m.Methods, ", ")
		if methods == "" {
			methods = "(any)"
		}
		none := func(l []string) string {
			if len(l) == 0 {
				return "(none)"
			}
			return strings.Join(l, ", ")
		}
		fmt.Fprintf(w, "  mcp:          methods %s; tools %s; resources %s\n", methods, none(m.Tools), none(m.Resources))
	} else {
		fmt.Fprintf(w, "  %-13s %s\n", "mcp:", "(any, as paths allow)")
	}
	if len(c.Chain) == 0 {
		fmt.Fprintln(w, "chain:     (root mandate)")
		return
	}
	fmt.Fprintf(w, "chain:     depth %d, root first\n", c.Depth)
	for i, l := range c.Chain {
		fmt.Fprintf(w, "  %d. %s  held by %s\n", i, l.ID, l.Subject)
	}
	fmt.Fprintf(w, "  %d. %s  held by %s (this mandate)\n", len(c.Chain), c.ID, c.Subject)
}
