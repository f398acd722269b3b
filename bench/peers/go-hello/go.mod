module megaconn/bench/go-hello

go 1.19
