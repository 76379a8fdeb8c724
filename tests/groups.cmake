# OT units solved by process groups (ot_group_ranks): the schedule, groups solving at the
# same time, plans against 1 rank, the same result for every rank count with groups of 2,
# and a failure on one rank of a group. 3 ranks leave one rank in no group.
tfuse_add_test_exe(test_fuse_groups test_fuse_groups.c)
tfuse_add_mpi_test(NAME fuse_groups TARGET test_fuse_groups RANKS 2 3 4 TIMEOUT 120)
