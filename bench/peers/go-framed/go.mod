module megaconn/bench/go-framed

go 1.19
