// Command sumdbfixture serves a checksum database over a modcdn fixture
// corpus with golang.org/x/mod/sumdb's reference server (TestServer), on
// 127.0.0.1. It prints "<url> <verifier key> <signer key>" on its first
// line of output, then serves until killed. -signer reuses a key, so that a
// test can run a second log under the same name and key (a fork).
//
// Built offline in GOPATH mode against Debian's golang-golang-x-mod-dev:
//
//	GO111MODULE=off GOPATH=<repo>/tests/go:/usr/share/gocode go build modcdn.test/sumdbfixture
package main

import (
	"crypto/ed25519"
	"crypto/rand"
	"encoding/base64"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"

	"golang.org/x/mod/module"
	"golang.org/x/mod/sumdb"
	"golang.org/x/mod/sumdb/dirhash"
	"golang.org/x/mod/sumdb/note"
)

func main() {
	corpus := flag.String("corpus", "", "corpus directory in GOPROXY layout")
	name := flag.String("name", "sum.modcdn.test", "checksum database name")
	skey := flag.String("signer", "", "signer key to reuse (default: a new one); its verifier key is derived")
	flag.Parse()
	if *corpus == "" {
		fmt.Fprintln(os.Stderr, "sumdbfixture: -corpus is required")
		os.Exit(2)
	}
	signer, verifier, err := note.GenerateKey(rand.Reader, *name)
	if err != nil {
		fmt.Fprintln(os.Stderr, "sumdbfixture:", err)
		os.Exit(1)
	}
	if *skey != "" {
		s, err := note.NewSigner(*skey)
		if err != nil {
			fmt.Fprintln(os.Stderr, "sumdbfixture: -signer:", err)
			os.Exit(2)
		}
		signer = *skey
		// The verifier key of a signer key: name+hash+key with the private
		// half replaced by the public one, as note.GenerateKey prints it.
		verifier = verifierFor(*skey, s)
	}
	gosum := func(path, vers string) ([]byte, error) {
		escPath, err := module.EscapePath(path)
		if err != nil {
			return nil, err
		}
		escVers, err := module.EscapeVersion(vers)
		if err != nil {
			return nil, err
		}
		base := filepath.Join(*corpus, filepath.FromSlash(escPath), "@v", escVers)
		zipHash, err := dirhash.HashZip(base+".zip", dirhash.Hash1)
		if err != nil {
			return nil, os.ErrNotExist
		}
		modHash, err := dirhash.Hash1([]string{"go.mod"}, func(string) (io.ReadCloser, error) { return os.Open(base + ".mod") })
		if err != nil {
			return nil, os.ErrNotExist
		}
		return []byte(fmt.Sprintf("%s %s %s\n%s %s/go.mod %s\n", path, vers, zipHash, path, vers, modHash)), nil
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		fmt.Fprintln(os.Stderr, "sumdbfixture:", err)
		os.Exit(1)
	}
	fmt.Printf("http://%s %s %s\n", ln.Addr(), strings.TrimSpace(verifier), signer)
	os.Stdout.Sync()
	srv := sumdb.NewServer(sumdb.NewTestServer(signer, gosum))
	if err := http.Serve(ln, srv); err != nil {
		fmt.Fprintln(os.Stderr, "sumdbfixture:", err)
		os.Exit(1)
	}
}

// verifierFor derives the verifier key of a signer key
// ("PRIVATE+KEY+name+hash+base64(alg||seed)").
func verifierFor(skey string, s note.Signer) string {
	parts := strings.SplitN(skey, "+", 5)
	if len(parts) != 5 {
		return ""
	}
	seed, err := base64.StdEncoding.DecodeString(parts[4])
	if err != nil || len(seed) != 1+ed25519.SeedSize {
		return ""
	}
	pub := ed25519.NewKeyFromSeed(seed[1:]).Public().(ed25519.PublicKey)
	vkey, err := note.NewEd25519VerifierKey(s.Name(), pub)
	if err != nil {
		return ""
	}
	return vkey
}
