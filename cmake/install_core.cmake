# Installs svdzip::core as a CMake package: find_package(svdzip) + target_link_libraries(svdzip::core).
include(GNUInstallDirs)
include(CMakePackageConfigHelpers)
install(TARGETS svdzip_core EXPORT svdzipTargets ARCHIVE DESTINATION ${CMAKE_INSTALL_LIBDIR})
install(DIRECTORY csrc/core/include/ DESTINATION ${CMAKE_INSTALL_INCLUDEDIR})
if(SVDZIP_WITH_CUDA)
  # cuBLAS/cuSOLVER are recorded by absolute path (the wheels have no CMake targets).
  install(TARGETS svdzip_core_cuda EXPORT svdzipTargets ARCHIVE DESTINATION ${CMAKE_INSTALL_LIBDIR})
  install(DIRECTORY csrc/cuda/include/ DESTINATION ${CMAKE_INSTALL_INCLUDEDIR})
endif()
install(EXPORT svdzipTargets NAMESPACE svdzip:: DESTINATION ${CMAKE_INSTALL_LIBDIR}/cmake/svdzip)
configure_package_config_file(cmake/svdzipConfig.cmake.in
  ${CMAKE_CURRENT_BINARY_DIR}/svdzipConfig.cmake INSTALL_DESTINATION ${CMAKE_INSTALL_LIBDIR}/cmake/svdzip)
write_basic_package_version_file(${CMAKE_CURRENT_BINARY_DIR}/svdzipConfigVersion.cmake
  COMPATIBILITY SameMinorVersion)
install(FILES ${CMAKE_CURRENT_BINARY_DIR}/svdzipConfig.cmake
              ${CMAKE_CURRENT_BINARY_DIR}/svdzipConfigVersion.cmake
        DESTINATION ${CMAKE_INSTALL_LIBDIR}/cmake/svdzip)
