// An HTTP server and client on Go's standard library only, for the socket tracing tests. Go
// makes its system calls without libc (non-blocking sockets on epoll, goroutines moving between
// OS threads), so what the daemon sees of it comes from the system call tracepoints alone.
//
//	go_http server PORT          serves on 127.0.0.1:PORT, prints "ready" once listening:
//	                             /users/<id> (JSON), /fail (500), /static (a 256 KiB file),
//	                             /call?port=P&id=I (GETs /users/I on 127.0.0.1:P, then answers;
//	                             &scheme=https for an HTTPS downstream), /fanout?port=P&id=I (the
//	                             same call twice, each from a goroutine of its own with the
//	                             request's context)
//	go_http tls-server PORT      the same over TLS (crypto/tls, a self-signed certificate made at
//	                             start), HTTP/1.1 only
//	go_http client URL N C       prints "ready", waits for a line on stdin, then GETs URL N times
//	                             from C goroutines on keep-alive connections and exits; "{n}" in
//	                             URL is replaced by each request's number; https URLs over
//	                             crypto/tls, HTTP/1.1, the certificate not verified
//	go_http spawn ARGS...        forks and execs itself with ARGS (its output passed through), and
//	                             waits for it: a Go program that starts others
//	go_http load URL RATE WARMUP SECONDS C
//	                             `cargo xtask bench --go`'s load: GETs URL at RATE per second
//	                             over C keep-alive connections, open loop (each request due at a
//	                             fixed time, its latency counted from then); prints "measuring"
//	                             after WARMUP seconds, then after SECONDS more one line:
//	                             "done scheduled=N completed=N errors=N p50_us=X p99_us=X"
package main

import (
	"bufio"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/http"
	"os"
	"os/exec"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"
)

func main() {
	if len(os.Args) < 2 {
		usage()
	}
	switch os.Args[1] {
	case "server":
		if len(os.Args) != 3 {
			usage()
		}
		serve(os.Args[2], false)
	case "tls-server":
		if len(os.Args) != 3 {
			usage()
		}
		serve(os.Args[2], true)
	case "spawn":
		child := exec.Command(os.Args[0], os.Args[2:]...)
		child.Stdin, child.Stdout, child.Stderr = os.Stdin, os.Stdout, os.Stderr
		if err := child.Run(); err != nil {
			fmt.Fprintln(os.Stderr, "go_http spawn:", err)
			os.Exit(1)
		}
	case "load":
		if len(os.Args) != 7 {
			usage()
		}
		rate, err1 := strconv.Atoi(os.Args[3])
		warmup, err2 := strconv.Atoi(os.Args[4])
		seconds, err3 := strconv.Atoi(os.Args[5])
		connections, err4 := strconv.Atoi(os.Args[6])
		if err1 != nil || err2 != nil || err3 != nil || err4 != nil || rate < 1 || connections < 1 {
			usage()
		}
		load(os.Args[2], rate, warmup, seconds, connections)
	case "client":
		if len(os.Args) != 5 {
			usage()
		}
		requests, err1 := strconv.Atoi(os.Args[3])
		workers, err2 := strconv.Atoi(os.Args[4])
		if err1 != nil || err2 != nil || workers < 1 {
			usage()
		}
		fmt.Println("ready")
		bufio.NewReader(os.Stdin).ReadString('\n')
		if failed := call(os.Args[2], requests, workers); failed > 0 {
			fmt.Fprintf(os.Stderr, "go_http client: %d requests failed\n", failed)
			os.Exit(1)
		}
	default:
		usage()
	}
}

func usage() {
	fmt.Fprintln(os.Stderr, "usage: go_http server PORT | go_http tls-server PORT | go_http client URL REQUESTS GOROUTINES | go_http load URL RATE WARMUP SECONDS CONNECTIONS")
	os.Exit(2)
}

// The outgoing calls of /call share one client, so its connections are kept alive between calls.
var downstream = &http.Client{Timeout: 10 * time.Second, Transport: http1Transport(0)}

// http1Transport speaks HTTP/1.1 over TLS too (Go negotiates HTTP/2 when both ends can; the
// agent parses HTTP/1.x), trusting any certificate: the servers here make their own.
func http1Transport(idlePerHost int) *http.Transport {
	return &http.Transport{
		MaxIdleConnsPerHost: idlePerHost,
		TLSClientConfig:     &tls.Config{InsecureSkipVerify: true},
		TLSNextProto:        map[string]func(string, *tls.Conn) http.RoundTripper{},
	}
}

// selfSigned makes a certificate for 127.0.0.1 and localhost.
func selfSigned() tls.Certificate {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		panic(err)
	}
	template := x509.Certificate{
		SerialNumber: big.NewInt(1),
		Subject:      pkix.Name{CommonName: "localhost"},
		DNSNames:     []string{"localhost"},
		IPAddresses:  []net.IP{net.ParseIP("127.0.0.1")},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(24 * time.Hour),
	}
	der, err := x509.CreateCertificate(rand.Reader, &template, &template, &key.PublicKey, key)
	if err != nil {
		panic(err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
}

func serve(port string, overTLS bool) {
	mux := http.NewServeMux()
	mux.HandleFunc("/users/", func(w http.ResponseWriter, r *http.Request) {
		id := strings.TrimPrefix(r.URL.Path, "/users/")
		w.Header().Set("Content-Type", "application/json")
		json.NewEncoder(w).Encode(map[string]string{"id": id, "name": "user " + id})
	})
	mux.HandleFunc("/fail", func(w http.ResponseWriter, r *http.Request) {
		http.Error(w, "failed on purpose", http.StatusInternalServerError)
	})
	// /call?port=P&id=I: GETs /users/I (I defaults to 7) on 127.0.0.1:P, then answers with what
	// it got. The id lets a test tell which request made which call.
	mux.HandleFunc("/call", func(w http.ResponseWriter, r *http.Request) {
		id := r.URL.Query().Get("id")
		if id == "" {
			id = "7"
		}
		scheme := r.URL.Query().Get("scheme")
		if scheme == "" {
			scheme = "http"
		}
		response, err := downstream.Get(scheme + "://127.0.0.1:" + r.URL.Query().Get("port") + "/users/" + id)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadGateway)
			return
		}
		defer response.Body.Close()
		body, _ := io.ReadAll(response.Body)
		w.Header().Set("Content-Type", "application/json")
		fmt.Fprintf(w, "{\"downstream_status\": %d, \"downstream\": %s}\n", response.StatusCode, strings.TrimSpace(string(body)))
	})
	// /fanout?port=P&id=I: two goroutines each GET /users/I with the request's context, as a
	// handler fanning out to backends does; answers once both have.
	mux.HandleFunc("/fanout", func(w http.ResponseWriter, r *http.Request) {
		query := r.URL.Query()
		scheme := query.Get("scheme")
		if scheme == "" {
			scheme = "http"
		}
		url := scheme + "://127.0.0.1:" + query.Get("port") + "/users/" + query.Get("id")
		var done sync.WaitGroup
		statuses := make([]int, 2)
		for i := range statuses {
			done.Add(1)
			go func(i int) {
				defer done.Done()
				request, err := http.NewRequestWithContext(r.Context(), "GET", url, nil)
				if err != nil {
					return
				}
				response, err := downstream.Do(request)
				if err != nil {
					return
				}
				io.Copy(io.Discard, response.Body)
				response.Body.Close()
				statuses[i] = response.StatusCode
			}(i)
		}
		done.Wait()
		if statuses[0] != http.StatusOK || statuses[1] != http.StatusOK {
			http.Error(w, fmt.Sprint(statuses), http.StatusBadGateway)
			return
		}
		fmt.Fprintln(w, "{\"fanout\": 2}")
	})
	// /static: a file served by http.ServeFile, which Go sends with sendfile(2) after the head.
	static, err := staticFile()
	if err != nil {
		fmt.Fprintln(os.Stderr, "go_http server:", err)
		os.Exit(1)
	}
	defer os.Remove(static)
	mux.HandleFunc("/static", func(w http.ResponseWriter, r *http.Request) {
		http.ServeFile(w, r, static)
	})
	listener, err := net.Listen("tcp", "127.0.0.1:"+port)
	if err != nil {
		fmt.Fprintln(os.Stderr, "go_http server:", err)
		os.Exit(1)
	}
	server := &http.Server{Handler: mux}
	if overTLS {
		server.TLSConfig = &tls.Config{Certificates: []tls.Certificate{selfSigned()}}
		server.TLSNextProto = map[string]func(*http.Server, *tls.Conn, http.Handler){}
		listener = tls.NewListener(listener, server.TLSConfig)
	}
	fmt.Println("ready")
	if err := server.Serve(listener); err != nil {
		fmt.Fprintln(os.Stderr, "go_http server:", err)
		os.Exit(1)
	}
}

// staticFile writes StaticFileBytes of text to a temporary file and returns its path.
func staticFile() (string, error) {
	file, err := os.CreateTemp("", "go_http-*.txt")
	if err != nil {
		return "", err
	}
	defer file.Close()
	line := []byte("static file content, sent by sendfile\n")
	for written := 0; written < StaticFileBytes; written += len(line) {
		if _, err := file.Write(line[:min(len(line), StaticFileBytes-written)]); err != nil {
			return "", err
		}
	}
	return file.Name(), nil
}

// StaticFileBytes is the size of /static (the tests check it).
const StaticFileBytes = 256 * 1024

func min(a, b int) int {
	if a < b {
		return a
	}
	return b
}

// call GETs url `requests` times from `workers` goroutines; returns how many failed.
func call(url string, requests, workers int) int {
	client := &http.Client{
		Timeout:   10 * time.Second,
		Transport: http1Transport(workers),
	}
	var failed int
	var lock sync.Mutex
	var done sync.WaitGroup
	for worker := 0; worker < workers; worker++ {
		share := requests / workers
		if worker < requests%workers {
			share++
		}
		done.Add(1)
		go func(worker, share int) {
			defer done.Done()
			for i := 0; i < share; i++ {
				number := strconv.Itoa(worker + i*workers)
				response, err := client.Get(strings.ReplaceAll(url, "{n}", number))
				if err == nil {
					// Read to the end, so the connection is reused for the next request.
					_, err = io.Copy(io.Discard, response.Body)
					response.Body.Close()
				}
				if err != nil || response.StatusCode != http.StatusOK {
					lock.Lock()
					failed++
					lock.Unlock()
				}
			}
		}(worker, share)
	}
	done.Wait()
	return failed
}

// load runs `cargo xtask bench --go`'s open-loop load (see the usage at the top).
func load(url string, rate, warmup, seconds, connections int) {
	client := &http.Client{Timeout: 5 * time.Second, Transport: http1Transport(connections)}
	client.Transport.(*http.Transport).MaxConnsPerHost = connections
	start := time.Now().Add(50 * time.Millisecond)
	measureFrom := start.Add(time.Duration(warmup) * time.Second)
	end := measureFrom.Add(time.Duration(seconds) * time.Second)
	interval := time.Duration(float64(time.Second) * float64(connections) / float64(rate))
	var lock sync.Mutex
	var latencies []time.Duration
	var scheduled, errors int
	var done sync.WaitGroup
	go func() {
		time.Sleep(time.Until(measureFrom))
		fmt.Println("measuring")
	}()
	for c := 0; c < connections; c++ {
		done.Add(1)
		go func(c int) {
			defer done.Done()
			due := start.Add(time.Duration(float64(time.Second) * float64(c) / float64(rate)))
			for ; due.Before(end); due = due.Add(interval) {
				time.Sleep(time.Until(due))
				response, err := client.Get(url)
				if err == nil {
					_, err = io.Copy(io.Discard, response.Body)
					response.Body.Close()
					if response.StatusCode != http.StatusOK {
						err = fmt.Errorf("status %d", response.StatusCode)
					}
				}
				latency := time.Since(due)
				if due.Before(measureFrom) {
					continue
				}
				lock.Lock()
				scheduled++
				if err != nil {
					errors++
				} else {
					latencies = append(latencies, latency)
				}
				lock.Unlock()
			}
		}(c)
	}
	done.Wait()
	sort.Slice(latencies, func(i, j int) bool { return latencies[i] < latencies[j] })
	percentile := func(p float64) float64 {
		if len(latencies) == 0 {
			return 0
		}
		rank := int(p/100*float64(len(latencies)) + 0.999999)
		if rank < 1 {
			rank = 1
		}
		return float64(latencies[rank-1].Microseconds())
	}
	fmt.Printf("done scheduled=%d completed=%d errors=%d p50_us=%.0f p99_us=%.0f\n",
		scheduled, len(latencies), errors, percentile(50), percentile(99))
}
