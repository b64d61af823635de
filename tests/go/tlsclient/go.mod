module capagent.test/tlsclient

go 1.19
