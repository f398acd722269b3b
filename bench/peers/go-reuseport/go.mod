module go-reuseport

go 1.19
