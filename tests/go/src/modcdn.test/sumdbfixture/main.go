// Command sumdbfixture serves a checksum database over a modcdn fixture
// corpus with golang.org/x/mod/sumdb's reference server (TestServer), on
// 127.0.0.1. It prints "<url> <verifier key>" on its first line of output,
// then serves until killed.
//
// Built offline in GOPATH mode against Debian's golang-golang-x-mod-dev:
//
//	GO111MODULE=off GOPATH=<repo>/tests/go:/usr/share/gocode go build modcdn.test/sumdbfixture
package main

import (
	"crypto/rand"
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
	fmt.Printf("http://%s %s\n", ln.Addr(), strings.TrimSpace(verifier))
	os.Stdout.Sync()
	srv := sumdb.NewServer(sumdb.NewTestServer(signer, gosum))
	if err := http.Serve(ln, srv); err != nil {
		fmt.Fprintln(os.Stderr, "sumdbfixture:", err)
		os.Exit(1)
	}
}
