// tlsclient: the Go HTTPS client of capagent's TLS tests (`capagent trace --tls` hooks Go's
// crypto/tls in it). Standard library only, so it builds offline with Debian's golang-go.
//
//	tlsclient -ca CA.pem [-data BODY] [-n N] URL
//
// GETs URL (POSTs BODY when -data is given) over HTTP/1.1, trusting only the CA in CA.pem,
// and prints the response body to stdout; N times (default 1), one request after the other
// on the same connection when the server keeps it open. Exit status 1 on any error.
package main

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
)

func main() {
	caFile := flag.String("ca", "", "PEM file of the CA to trust")
	data := flag.String("data", "", "request body: POST it instead of a GET")
	n := flag.Int("n", 1, "how many requests")
	flag.Parse()
	if *caFile == "" || flag.NArg() != 1 || *n < 1 {
		fmt.Fprintln(os.Stderr, "usage: tlsclient -ca CA.pem [-data BODY] [-n N] URL")
		os.Exit(2)
	}
	if err := run(*caFile, *data, *n, flag.Arg(0)); err != nil {
		fmt.Fprintln(os.Stderr, "tlsclient:", err)
		os.Exit(1)
	}
}

func run(caFile, data string, n int, url string) error {
	pem, err := os.ReadFile(caFile)
	if err != nil {
		return err
	}
	roots := x509.NewCertPool()
	if !roots.AppendCertsFromPEM(pem) {
		return fmt.Errorf("no certificate in %s", caFile)
	}
	// A TLSClientConfig of our own turns HTTP/2 off (ForceAttemptHTTP2 stays false): the
	// plaintext is HTTP/1.1, whatever the server offers.
	client := &http.Client{Transport: &http.Transport{
		TLSClientConfig: &tls.Config{RootCAs: roots},
	}}
	for i := 0; i < n; i++ {
		if err := request(client, data, url); err != nil {
			return err
		}
	}
	return nil
}

func request(client *http.Client, data, url string) error {
	var resp *http.Response
	var err error
	if data == "" {
		resp, err = client.Get(url)
	} else {
		resp, err = client.Post(url, "text/plain", bytes.NewBufferString(data))
	}
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	_, err = io.Copy(os.Stdout, resp.Body)
	return err
}
