// Command s3server is the S3 store the outputs tests run against: gofakes3
// with its bbolt backend, so objects survive a restart of the server (an
// outage), served on a loopback port. Not part of arkgw; built by the test.
//
// It prints "listening ADDR" once it serves, then one line per request
// ("req METHOD PATH?QUERY"), which the crash test uses to kill the shipper
// in the middle of a multipart upload.
package main

import (
	"flag"
	"fmt"
	"log"
	"net"
	"net/http"
	"os"
	"sync"
	"time"

	"github.com/johannesboyne/gofakes3"
	"github.com/johannesboyne/gofakes3/backend/s3bolt"
)

func main() {
	addr := flag.String("addr", "127.0.0.1:0", "listen address")
	db := flag.String("db", "", "bbolt file holding the objects")
	bucket := flag.String("bucket", "", "bucket to create if missing")
	partDelay := flag.Duration("part-delay", 0, "delay before answering each multipart part")
	flag.Parse()
	be, err := s3bolt.NewFile(*db)
	if err != nil {
		log.Fatal(err)
	}
	if *bucket != "" {
		if ok, err := be.BucketExists(*bucket); err != nil {
			log.Fatal(err)
		} else if !ok {
			if err := be.CreateBucket(*bucket); err != nil {
				log.Fatal(err)
			}
		}
	}
	faker := gofakes3.New(be, gofakes3.WithTimeSkewLimit(0), gofakes3.WithLogger(gofakes3.DiscardLog()))
	h := faker.Server()
	var mu sync.Mutex
	l, err := net.Listen("tcp", *addr)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Printf("listening %s\n", l.Addr())
	os.Stdout.Sync()
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		fmt.Printf("req %s %s\n", r.Method, r.URL.RequestURI())
		mu.Unlock()
		if *partDelay > 0 && r.URL.Query().Get("partNumber") != "" {
			time.Sleep(*partDelay)
		}
		h.ServeHTTP(w, r)
	})}
	log.Fatal(srv.Serve(l))
}
